"""The step benchmark: the project's train step vs PyTorch's on this machine, side by side.

One member (``steps``) runs every case of ``fundamentals.benchmark.plan`` in fresh
processes, in ``--benchmark_rounds`` interleaved rounds (A B A B …): the 512- and
64-wide reference MLPs (batch 256) in float32 and bfloat16, PyTorch eager beside each
when ``torch`` is importable (``pip install -e '.[bench]'``), and the sweep case (8
seeds of the 64-wide model: vectorized, vectorized on one shared data order,
sequential, and PyTorch one after another). Writes ``benchmark.json`` (every run of
every round, the medians, the machine) and ``report.md`` (the table, the machine and
the targets as checks); prints the table.
"""

import dataclasses
import json

from fundamentals import benchmark
from fundamentals import runner
from fundamentals.config import Knobs, knob

PRECISIONS = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  rounds: int = knob(3, 'Interleaved rounds (every case once per round).',
                     group='benchmark')
  models: tuple[int, ...] = knob((512, 64), 'Hidden widths of the 3-layer MLPs timed.',
                                 group='benchmark')
  precisions: tuple[str, ...] = knob(PRECISIONS, 'Precisions timed (--precision values).',
                                     group='benchmark')
  sweep_members: int = knob(8, 'Seeds of the sweep case (smallest model); 0: no sweep '
                            'case.', group='benchmark')
  torch: bool = knob(True, 'Time PyTorch beside each case when torch is importable.',
                     group='benchmark')
  window_s: float = knob(0.7, 'Seconds per timed window.', group='benchmark')
  windows: int = knob(4, 'Timed windows per run (the median is its figure).',
                      group='benchmark')
  warmup_s: float = knob(1.0, 'Warm-up seconds before the windows.', group='benchmark')

  def validate(self):
    for name in ('rounds', 'windows'):
      if getattr(self, name) < 1:
        raise ValueError(f'benchmark_{name}={getattr(self, name)} must be positive')
    if not self.models or any(h < 1 for h in self.models):
      raise ValueError(f'benchmark_models={list(self.models)} must be positive widths')
    unknown = [p for p in self.precisions if p not in PRECISIONS]
    if unknown or not self.precisions:
      raise ValueError(f'benchmark_precisions={list(self.precisions)}: valid '
                       f'{list(PRECISIONS)}')
    if self.sweep_members < 0 or self.window_s <= 0 or self.warmup_s < 0:
      raise ValueError('benchmark_sweep_members must be >= 0, benchmark_window_s > 0 '
                       'and benchmark_warmup_s >= 0')


def members(config, s: Settings) -> dict[str, dict]:
  del config, s
  return {'steps': {}}


def measure(context: runner.Context, member) -> dict:
  s = context.settings
  with_torch = s.torch and benchmark.torch_available()
  cases = benchmark.plan(models=s.models, precisions=s.precisions,
                         sweep_members=s.sweep_members, with_torch=with_torch)
  print(f'benchmark: {len(cases)} cases × {s.rounds} rounds, each in a fresh process'
        + ('' if with_torch else ' (no PyTorch: torch is not importable; '
           "pip install -e '.[bench]')"), flush=True)
  runs = benchmark.run_rounds(
      cases, rounds=s.rounds, directory=context.workdir / member.name / 'cases',
      timing={'warmup_s': s.warmup_s, 'window_s': s.window_s, 'windows': s.windows},
      echo=lambda line: print(line, flush=True))
  return {'runs': runs, 'rows': benchmark.summarize(runs), 'machine': benchmark.machine(),
          'with_torch': with_torch}


def summarize(context: runner.Context, results) -> runner.Summary:
  output = results['steps'].output
  rows, info = output['rows'], output['machine']
  table = benchmark.table(rows)
  print(table, flush=True)
  versions = ', '.join(f'{k} {info[k]}' for k in ('jax', 'jaxlib', 'flax', 'optax', 'torch')
                       if k in info)
  text = (
      f'Machine: {info.get("cpu", "?")}, {info["cores"]} cores '
      f'({", ".join(info.get("matmul_extensions", [])) or "no SIMD flags read"}); '
      f'{info["platform"]}, Python {info["python"]}; {versions}. '
      f'{context.settings.rounds} interleaved rounds, each case in a fresh process; '
      'figures are medians over rounds, ratios medians of per-round ratios against the '
      'PyTorch case of the same model that ran beside it ("best": the faster of PyTorch '
      'float32 and bfloat16 autocast in that round). In sweep rows a step advances every '
      'member (examples/s and GFLOP/s count them all). "% of matmul peak": achieved '
      'matmul FLOP/s over that of a 2048² matmul of the same library and precision '
      'timed in the same process. Eval, input and diagnostics columns come from the '
      'first round.\n\n' + table + '\n')
  if not output['with_torch']:
    text += "\nPyTorch was not importable, so there are no ratios (pip install -e '.[bench]').\n"
  return runner.Summary(
      title='Step benchmark: the project vs PyTorch on this machine', text=text,
      files={'benchmark.json': json.dumps(
          {'machine': info, 'rows': rows, 'runs': output['runs']}, indent=1)},
      values={r['label']: {k: v for k, v in r.items() if k in (
          'steps_per_s', 'vs_torch_float32', 'vs_torch_bfloat16', 'vs_torch_best')}
              for r in rows if 'error' not in r})


TARGETS = (
    # (case, column, at least, what it means)
    ('jax 512 float32', 'vs_torch_float32', 1.0, '512-wide float32 ≥ 1.0× PyTorch float32'),
    ('jax 512 bfloat16', 'vs_torch_best', 1.5, '512-wide bfloat16 ≥ 1.5× PyTorch\'s best'),
    ('jax 512 float32', 'peak_fraction', 0.7, '512-wide float32 ≥ 70% of the matmul peak'),
    ('jax 512 bfloat16', 'peak_fraction', 0.7, '512-wide bfloat16 ≥ 70% of the bf16 matmul '
     'peak'),
    ('jax 64 float32', 'vs_torch_float32', 2.0, '64-wide float32 ≥ 2× PyTorch float32'),
    ('jax 64 bfloat16', 'vs_torch_bfloat16', 1.2, '64-wide bfloat16 ≥ 1.2× PyTorch bf16 '
     'autocast'),
)


def check(context: runner.Context, results) -> list[runner.Check]:
  rows = {r['label']: r for r in results['steps'].output['rows'] if 'error' not in r}
  checks = [runner.Check(expected='every case ran', observed=', '.join(
      r['label'] for r in results['steps'].output['rows'] if 'error' in r) or 'all ran',
                         passed=all('error' not in r
                                    for r in results['steps'].output['rows']))]
  for label, column, least, what in TARGETS:
    if label in rows and column in rows[label]:
      value = rows[label][column]
      checks.append(runner.Check(expected=what, observed=f'{value:.2f}', passed=value >= least))
  sweeps = {r['case']['mode'] + (' shared' if r['case']['shared_order'] else ''): r
            for r in rows.values() if r['case']['mode'] != 'single'}
  sequential = next((r for r in sweeps.values() if r['case']['library'] == 'jax'
                     and r['case']['mode'] == 'sequential'), None)
  for key in ('vectorized', 'vectorized shared'):
    row = sweeps.get(key)
    if row is None:
      continue
    n = row['case']['members']
    if 'vs_torch_float32' in row:
      checks.append(runner.Check(
          expected=f'{n}-seed sweep, {key}: ≥ 2× {n} sequential PyTorch runs',
          observed=f'{row["vs_torch_float32"]:.2f}×', passed=row['vs_torch_float32'] >= 2))
    if sequential is not None:
      ratio = row['steps_per_s'] / sequential['steps_per_s']
      checks.append(runner.Check(
          expected=f'{n}-seed sweep, {key}: faster than {n} sequential project runs',
          observed=f'{ratio:.2f}× (medians)', passed=ratio > 1))
  for label, row in rows.items():
    for column in ('input_share', 'diagnostics_share'):
      if label.startswith('jax') and column in row:
        checks.append(runner.Check(
            expected=f'{label}: {column.replace("_", " ")} < 5% of step time',
            observed=f'{row[column]:.1%}', passed=row[column] < 0.05))
  return checks


EXPERIMENT = runner.Experiment(
    name='benchmark',
    description='Step benchmark: the train step vs PyTorch, interleaved, with the '
    'machine\'s matmul peak (no training data needed).',
    members=members, settings=Settings, settings_prefix='benchmark_', measure=measure,
    summarize=summarize, check=check, verbose=True, needs_data=False,
    scales={'tiny': runner.Scale(settings={'rounds': 1, 'models': (16,),
                                           'precisions': ('float32',), 'sweep_members': 2,
                                           'window_s': 0.1, 'windows': 2, 'warmup_s': 0.1}),
            'full': runner.Scale(settings={'rounds': 7, 'windows': 6})})
