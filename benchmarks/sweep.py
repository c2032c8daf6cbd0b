"""Sweep benchmark: one grid run sequentially, vectorized, and recompiling every member.

  python benchmarks/sweep.py                          # 24 members: 4 inits × 3 activations × 2 BN
  python benchmarks/sweep.py --steps=100 --inits=normal,kaiming --activations=relu

Each mode runs the whole sweep in a fresh process (no compilation carried over, the
persistent compilation cache off) into its own directory under ``--workdir``:

- ``recompile``: every member compiles its own steps (all JAX caches cleared first):
  what a sweep costs when learning rate, seed and init are constants of the program;
- ``sequential``: members one after another; members of one structure (here: the
  same activation and BN, any init) share one compilation;
- ``vectorized``: ``--vectorize``: the members of one structure train together,
  vmapped in one jitted program.

Prints and writes ``benchmark.md`` / ``benchmark.json``: wall time, XLA compile time
and its share, and the members' test accuracies (which must agree between modes).
"""

import json
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags

MODES = ('recompile', 'sequential', 'vectorized')
flags.DEFINE_list('modes', list(MODES), f'Modes to time, from {",".join(MODES)}.')
flags.DEFINE_list('inits', ['normal', 'lecun', 'xavier', 'kaiming'], 'Inits swept.')
flags.DEFINE_list('activations', ['tanh', 'relu', 'gelu'], 'Activations swept.')
flags.DEFINE_list('batchnorm', ['false', 'true'], 'BatchNorm settings swept.')
flags.DEFINE_integer('steps', 300, 'Training steps per member.')
flags.DEFINE_string('dataset', 'synthetic_fruits', 'Dataset of the sweep.')
flags.DEFINE_string('workdir', 'runs/benchmark_sweep', 'Where the sweeps are written.')
flags.DEFINE_string('child', '', 'Internal: run one mode in this process.')
FLAGS = flags.FLAGS


def run_mode(mode: str, workdir: pathlib.Path) -> dict:
  """Runs the sweep in this process as ``mode``; returns its timings and results."""
  import jax  # pylint: disable=g-import-not-at-top
  from fundamentals import data, runtime, sweep, train  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top

  base = Config(dataset=FLAGS.dataset, steps=FLAGS.steps, eval_every=FLAGS.steps)
  axes = sweep.parse_axes({'init': FLAGS.inits, 'activation': FLAGS.activations,
                           'batchnorm': FLAGS.batchnorm})
  dataset = data.load_configured(base)  # Loaded once, outside the timing.
  quiet = lambda line: None

  members = sweep.expand(base, axes, workdir=workdir)
  summaries = {}

  def run_member(member, *, overwrite, resume):
    if mode == 'recompile':
      train.compiled_steps.cache_clear()
      jax.clear_caches()
    summaries[member.name] = train.train(member.config, dataset=dataset,
                                         overwrite=overwrite, resume=resume, echo=quiet)

  def run_group(batch, *, overwrite, resume):
    for member, summary in zip(batch, train.train_group(
        [m.config for m in batch], dataset=dataset, overwrite=overwrite, resume=resume,
        echo=quiet)):
      summaries[member.name] = summary

  start = time.perf_counter()
  with runtime.compile_log() as compiles:
    sweep.run(members, workdir=workdir, manifest=sweep.manifest(base, members, axes=axes),
              run_member=run_member, run_group=run_group if mode == 'vectorized' else None,
              group_key=train.canonical_config, overwrite=True, echo=quiet)
  wall_s = time.perf_counter() - start
  rows = [{'member': name, **s} for name, s in summaries.items()]
  step_compiles = [s for name, s in compiles if 'train_step' in name or 'eval_step' in name]
  return {'mode': mode, 'members': len(rows), 'wall_s': wall_s,
          'compile_s': sum(s for _, s in compiles), 'compiles': len(compiles),
          'step_compiles': len(step_compiles), 'step_compile_s': sum(step_compiles),
          'test_accuracy': {r['member']: r.get('final_test_accuracy') for r in rows}}


def markdown(results: list[dict]) -> str:
  lines = ['| mode | members | wall s | XLA compile s | compile share | compilations '
           '(train/eval steps) |', '| --- | --- | --- | --- | --- | --- |']
  for r in results:
    lines.append(f'| {r["mode"]} | {r["members"]} | {r["wall_s"]:.1f} | '
                 f'{r["compile_s"]:.1f} | {r["compile_s"] / r["wall_s"]:.0%} | '
                 f'{r["compiles"]} ({r["step_compiles"]}) |')
  reference = results[0]['test_accuracy']
  for r in results[1:]:
    gaps = [abs(a - reference[m]) for m, a in r['test_accuracy'].items()
            if a is not None and reference.get(m) is not None]
    if gaps:
      lines.append(f'\n{r["mode"]} vs {results[0]["mode"]}: largest test-accuracy '
                   f'difference between the same members {max(gaps):.2%}.')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  root = pathlib.Path(FLAGS.workdir)
  if FLAGS.child:
    print(json.dumps(run_mode(FLAGS.child, root / FLAGS.child)))
    return
  unknown = sorted(set(FLAGS.modes) - set(MODES))
  if unknown:
    sys.exit(f'unknown --modes {unknown}; valid: {",".join(MODES)}')
  results = []
  for mode in FLAGS.modes:
    print(f'{mode}: running the sweep in a fresh process…', flush=True)
    child = subprocess.run(
        [sys.executable, __file__, f'--child={mode}', *sys.argv[1:]],
        capture_output=True, text=True, check=False)
    if child.returncode:
      sys.exit(f'{mode} failed:\n{child.stderr[-3000:]}')
    results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    r = results[-1]
    print(f'{mode}: {r["wall_s"]:.1f} s, compile {r["compile_s"]:.1f} s', flush=True)
  table = markdown(results)
  print(table)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'benchmark.md').write_text(table)
  (root / 'benchmark.json').write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
