"""Step benchmark as a plain script: the project's train step vs PyTorch, interleaved.

  python benchmarks/step.py                            # 512- and 64-wide, f32 and bf16, sweep
  python benchmarks/step.py --models=64 --precisions=float32 --sweep_members=0 --rounds=5

The same measurement as ``python launch.py --experiment=benchmark`` (which adds the
report and the targets as checks): every case in a fresh process, ``--rounds``
interleaved rounds, per-round ratios against PyTorch (``pip install -e '.[bench]'``).
Prints the table; writes ``benchmark.json`` into ``--workdir``.
"""

import json
import pathlib

from absl import app
from absl import flags

flags.DEFINE_integer('rounds', 3, 'Interleaved rounds.')
flags.DEFINE_list('models', ['512', '64'], 'Hidden widths of the 3-layer MLPs.')
flags.DEFINE_list('precisions', ['float32', 'bfloat16'], 'Precisions timed.')
flags.DEFINE_integer('sweep_members', 8, 'Seeds of the sweep case; 0: none.')
flags.DEFINE_bool('torch', True, 'Time PyTorch beside each case when importable.')
flags.DEFINE_string('workdir', 'runs/benchmark_step', 'Where the inputs and results go.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from fundamentals import benchmark  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(FLAGS.workdir)
  cases = benchmark.plan(models=[int(m) for m in FLAGS.models],
                         precisions=FLAGS.precisions, sweep_members=FLAGS.sweep_members,
                         with_torch=FLAGS.torch and benchmark.torch_available())
  runs = benchmark.run_rounds(cases, rounds=FLAGS.rounds, directory=workdir / 'cases',
                              timing={'warmup_s': 1.0, 'window_s': 0.7, 'windows': 4})
  rows = benchmark.summarize(runs)
  print(benchmark.table(rows))
  (workdir / 'benchmark.json').write_text(json.dumps(
      {'machine': benchmark.machine(), 'rows': rows, 'runs': runs}, indent=1))
  print(f'wrote {workdir}/benchmark.json')


if __name__ == '__main__':
  app.run(main)
