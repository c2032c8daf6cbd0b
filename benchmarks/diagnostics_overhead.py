"""Diagnostics overhead: wall time of the default run with and without diagnostics.

  python benchmarks/diagnostics_overhead.py                 # 3 pairs, compilation cache warm
  python benchmarks/diagnostics_overhead.py --cache=off     # every run compiles

Runs ``python launch.py`` (the reference run; extra arguments after ``--`` are passed
on) as a user would, alternating ``--diagnostics_every=100`` and ``=0`` so that drifts
in machine load hit both alike, and reports the median wall time of each and the
overhead. ``--cache=warm`` uses a persistent compilation cache warmed by one run of
each first (every later run of a user's is like that); ``off`` compiles every time.
"""

import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

flags.DEFINE_integer('pairs', 3, 'Alternating (with, without) pairs to time.')
flags.DEFINE_enum('cache', 'warm', ['warm', 'off'], 'Persistent compilation cache.')
flags.DEFINE_integer('every', 100, 'The --diagnostics_every to compare with 0.')
FLAGS = flags.FLAGS
LAUNCH = pathlib.Path(__file__).resolve().parents[1] / 'launch.py'


def timed_run(every: int, workdir: pathlib.Path, cache: str, extra: list[str]) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, str(LAUNCH), f'--diagnostics_every={every}',
                  f'--workdir={workdir}', '--overwrite', f'--compilation_cache={cache}',
                  *extra], check=True, capture_output=True)
  return time.perf_counter() - start


def main(argv):
  extra = argv[1:]
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    cache = str(tmp / 'cache') if FLAGS.cache == 'warm' else ''
    if cache:  # Warm: one run of each compiles and fills the cache.
      for every in (FLAGS.every, 0):
        timed_run(every, tmp / 'warmup', cache, extra)
    times = {FLAGS.every: [], 0: []}
    for pair in range(FLAGS.pairs):
      for every in ((FLAGS.every, 0) if pair % 2 == 0 else (0, FLAGS.every)):
        times[every].append(timed_run(every, tmp / f'run{every}', cache, extra))
        print(f'pair {pair + 1}: diagnostics_every={every}: {times[every][-1]:.2f} s',
              flush=True)
  with_d, without = statistics.median(times[FLAGS.every]), statistics.median(times[0])
  print(f'cache {FLAGS.cache}: median {with_d:.2f} s with diagnostics every '
        f'{FLAGS.every} steps, {without:.2f} s without: overhead '
        f'{with_d - without:+.2f} s ({(with_d - without) / without:+.1%})')


if __name__ == '__main__':
  app.run(main)
