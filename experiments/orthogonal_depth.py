"""Deep linear nets: orthogonal init learns in a depth-independent time, scaled
Gaussian does not (Saxe, McClelland & Ganguli, ICLR 2014: random orthogonal initial
conditions).

Members, each a training run in its own sub-directory: init ∈ {orthogonal, lecun}
× depth ∈ ``--od_depths`` × ``--od_seeds``, a *linear* MLP (``activation='identity'``,
no BatchNorm) of that many hidden layers of ``--od_width`` units, every member with
the same optimizer, learning rate, batch and seed. Orthogonal uses gain 1 (a linear
layer's); LeCun with gain 1, N(0, 1/fan_in), is Saxe et al.'s "scaled random
Gaussian". The output layer takes the hidden init with linear gain and no shrinking
(``output_scale=1``), so every layer is of the scheme compared. Members of one depth
differ only in per-run fields (init, seed): ``--vectorize`` trains them together.

A linear net computes x ↦ x·W_1⋯W_L·W_out; its learning speed along each direction
of the data is set by the singular values of that product. With orthogonal kernels
every singular value is 1, at any depth (the input layer, 12,288 → width, is
semi-orthogonal: its columns are orthonormal, so WᵀW = I still holds); a product of
L Gaussian matrices has singular values that spread as L grows (some directions
shrink, some grow), and the slow ones set the time to learn. The measure of speed is
the number of steps until the train loss (mean over a window of ``log_every`` steps)
first reaches ``--od_threshold``; a run that never does counts as the step budget,
marked ≥.

Summarizes: ``steps_to_threshold.png`` (steps against depth, log x), ``loss.png``
(every loss curve, one panel per init), a table with the singular values of the
end-to-end map at init, and the check: the steps(deepest)/steps(shallowest) ratio of
orthogonal is smaller than that of Gaussian.
"""

import dataclasses
import math

import numpy as np

from fundamentals import losses
from fundamentals import plots
from fundamentals import rundir
from fundamentals import report
from fundamentals import runner
from fundamentals import train
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

INITS = ('orthogonal', 'lecun')
LABELS = {'orthogonal': 'orthogonal', 'lecun': 'scaled Gaussian N(0, 1/fan_in)'}
COLOURS = {'orthogonal': 'tab:blue', 'lecun': 'tab:red'}
DEFAULTS = {'output_init': 'same', 'output_scale': 1.0, 'schedule': 'constant',
            'warmup_steps': 0, 'lr': 0.001, 'momentum': 0.9, 'steps': 400,
            'log_every': 10, 'eval_every': 400, 'diagnostics_every': 0,
            'checkpoint_every': 0}


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  depths: tuple[int, ...] = knob((1, 2, 4, 8, 16, 32), 'Numbers of hidden linear layers.',
                                 group='orthogonal_depth')
  width: int = knob(64, 'Units per hidden layer.', group='orthogonal_depth')
  threshold: float = knob(1.2, 'Train loss (nats) whose first crossing is the learning '
                          'time; well below ln N.', group='orthogonal_depth')
  seeds: tuple[int, ...] = knob((0,), 'Seeds per init and depth (the steps are '
                                'averaged over them).', group='orthogonal_depth')

  def validate(self):
    if not self.depths or any(d < 1 for d in self.depths) or len(set(self.depths)) != len(
        self.depths):
      raise ValueError(f'od_depths={list(self.depths)} must be one or more distinct '
                       'positive integers')
    if self.width < 1:
      raise ValueError(f'od_width={self.width} must be a positive integer')
    if not (math.isfinite(self.threshold) and self.threshold > 0):
      raise ValueError(f'od_threshold={self.threshold} must be a positive number (nats)')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'od_seeds={list(self.seeds)} must be one or more distinct seeds')


def member_name(init: str, depth: int, seed: int) -> str:
  return f'{init}/depth{depth}-s{seed}'


def members(config, s: Settings) -> dict[str, dict]:
  del config  # Every member is the base config with these fields replaced.
  return {member_name(init, depth, seed): dict(
      init=init, seed=seed, hidden=(s.width,) * depth, activation='identity',
      batchnorm=False)
          for depth in sorted(s.depths) for init in INITS for seed in s.seeds}


def end_to_end_singular_values(kernels: list[np.ndarray]) -> np.ndarray:
  """The singular values of the product K_1·K_2⋯K_n (float64), in decreasing order,
  the first min over the kernels' sides of them (the product's rank at most; the rest
  are 0): how a linear net x ↦ x·K_1⋯K_n scales each direction it passes."""
  product = np.asarray(kernels[0], np.float64)
  for kernel in kernels[1:]:
    product = product @ np.asarray(kernel, np.float64)
  rank = min(min(np.shape(k)) for k in kernels)
  return np.linalg.svd(product, compute_uv=False)[:rank]


def analyze(context: runner.Context, member, fit: train.Fit) -> dict:
  """The singular values of the end-to-end map at init (the run's own first model,
  rebuilt from its seed as ``train.initial_state`` builds it)."""
  del fit
  model = train.initial_state(member.config, context.dataset).model
  kernels = [np.asarray(d.kernel[...]) for d in model.dense] + [
      np.asarray(model.output.kernel[...])]
  return {'singular_values': end_to_end_singular_values(kernels).tolist()}


def learning_times(s: Settings, results, budget: int) -> dict[tuple[str, int], dict]:
  """Per (init, depth): steps to the threshold per seed, their mean, whether every
  seed reached it, and how many runs diverged (counted as the budget unless they
  reached it first)."""
  out = {}
  for init in INITS:
    for depth in s.depths:
      members = [results[member_name(init, depth, seed)] for seed in s.seeds]
      runs = [report.steps_or_budget(r.records, s.threshold, budget=budget) for r in members]
      out[init, depth] = {'steps': [r[0] for r in runs], 'mean': float(np.mean(
          [r[0] for r in runs])), 'reached': all(r[1] for r in runs),
                          'diverged': sum(r.status == 'diverged' for r in members)}
  return out


def _steps_text(t: dict) -> str:
  text = f'{t["mean"]:.0f}' if t['reached'] else f'≥ {t["mean"]:.0f}'
  return text + (f' ({t["diverged"]} diverged)' if t['diverged'] else '')


def growth(times: dict, init: str, depths: list[int]) -> float:
  """steps(deepest) / steps(shallowest) of ``init``."""
  return times[init, max(depths)]['mean'] / times[init, min(depths)]['mean']


def check(context: runner.Context, results) -> list[runner.Check]:
  s, budget = context.settings, context.config.steps
  times = learning_times(s, results, budget)
  lo, hi = min(s.depths), max(s.depths)
  ratio = {init: growth(times, init, s.depths) for init in INITS}
  never = [f'{init} depth {d}' for (init, d), t in times.items() if not t['reached']]
  return [runner.Check(
      f'deep linear nets, same lr: the steps to reach train loss {s.threshold:g} grow '
      f'less from depth {lo} to depth {hi} with orthogonal init than with scaled '
      'Gaussian, steps(deepest)/steps(shallowest)',
      f'orthogonal {_steps_text(times["orthogonal", hi])}/'
      f'{_steps_text(times["orthogonal", lo])} = {ratio["orthogonal"]:.2f}, Gaussian '
      f'{_steps_text(times["lecun", hi])}/{_steps_text(times["lecun", lo])} = '
      f'{ratio["lecun"]:.2f}' + (f' (never reached, counted as the {budget}-step budget:'
                                 f' {", ".join(never)})' if never else ''),
      ratio['orthogonal'] < ratio['lecun'])]


def steps_figure(s: Settings, times: dict, budget: int):
  """Steps to the threshold against depth (log x); open markers: not reached."""
  depths = sorted(s.depths)
  lines = []
  for init in INITS:
    lines.append({'x': depths, 'y': [times[init, d]['mean'] for d in depths],
                  'style': '-o', 'color': COLOURS[init], 'label': LABELS[init]})
    missed = [d for d in depths if not times[init, d]['reached']]
    if missed:
      lines.append({'x': missed, 'y': [times[init, d]['mean'] for d in missed],
                    'style': 'x', 'ms': 12, 'color': COLOURS[init],
                    'label': f'{init}: not reached (budget)'})
  lines.append({'x': [depths[0], depths[-1]], 'y': [budget, budget], 'style': ':',
                'color': 'gray', 'label': f'budget ({budget} steps)'})
  return plots.line_panels_figure({
      f'steps until train loss ≤ {s.threshold:g} (same lr)': {
          'lines': lines, 'xlabel': 'hidden linear layers', 'xscale': 'log',
          'ylabel': 'steps'}}, size=(6.5, 4.2), grid=True, dpi=90)


def loss_figure(s: Settings, results, *, threshold: float, ln_n: float):
  """Every train-loss curve (first seed), one panel per init, coloured by depth."""
  depths = sorted(s.depths)
  panels = {}
  for init in INITS:
    lines = []
    for colour, depth in zip(plots.CYCLE, depths):
      r = results[member_name(init, depth, s.seeds[0])]
      points = [(rec['step'], rec['train_loss']) for rec in r.records
                if rundir.finite(rec.get('train_loss'))]
      if points:
        x, y = zip(*points)
        lines.append({'x': x, 'y': y, 'color': colour, 'label': f'depth {depth}'})
    steps = max((p['x'][-1] for p in lines), default=1)
    lines += [{'x': [0, steps], 'y': [threshold, threshold], 'style': '--',
               'color': 'black', 'label': f'threshold {threshold:g}'},
              {'x': [0, steps], 'y': [ln_n, ln_n], 'style': ':', 'color': 'gray',
               'label': f'ln N = {ln_n:.2f}'}]
    panels[LABELS[init]] = {'lines': lines, 'xlabel': 'step',
                            'ylabel': 'train loss (window mean)', 'legend': {'ncol': 2}}
  return plots.line_panels_figure(panels, size=(11, 4.2), grid=True, dpi=90)


def _spread(result: runner.Result) -> str:
  values = (result.output or {}).get('singular_values')
  return f'{min(values):.3g}–{max(values):.3g}' if values else '—'


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  budget, ln_n = config.steps, losses.expected_initial_loss(dataset.num_classes)
  times = learning_times(s, results, budget)
  rows = []
  for depth in sorted(s.depths):
    row = [depth]
    for init in INITS:
      first = results[member_name(init, depth, s.seeds[0])]
      final = [(results[member_name(init, depth, seed)].summary or {}).get('final_train_loss')
               for seed in s.seeds]
      row += [_steps_text(times[init, depth]), _spread(first),
              ', '.join('—' if not rundir.finite(f) else f'{f:.3f}' for f in final)]
    rows.append(row)
  table = markdown_table(
      ['hidden layers', 'orthogonal: steps', 'σ(map) at init', 'final train loss',
       'Gaussian: steps', 'σ(map) at init', 'final train loss'], rows)
  ratio = {init: growth(times, init, s.depths) for init in INITS}
  text = runner.render(
      __file__, config=config, dataset=dataset, s=s, table=table, ln_n=ln_n,
      seeds=', '.join(map(str, s.seeds)), depths=', '.join(map(str, sorted(s.depths))),
      lo=min(s.depths), hi=max(s.depths), orthogonal_ratio=ratio['orthogonal'],
      gaussian_ratio=ratio['lecun'], num_train=len(dataset.train_labels))
  values = {'steps_to_threshold': {f'{init}/depth{d}': t for (init, d), t in times.items()},
            'growth': ratio}
  return runner.Summary(
      'Deep linear nets: orthogonal init learns in a depth-independent time', text,
      figures={'steps_to_threshold.png': steps_figure(s, times, budget),
               'loss.png': loss_figure(s, results, threshold=s.threshold, ln_n=ln_n)},
      values=values)


EXPERIMENT = runner.Experiment(
    name='orthogonal_depth',
    description='Deep linear MLPs of depth 1-32: steps to a loss threshold, orthogonal '
                'vs scaled Gaussian init.',
    paper='Saxe, McClelland & Ganguli (2014), Exact solutions to the nonlinear dynamics '
          'of learning in deep linear neural networks (random orthogonal initial conditions, '
          'depth-independent learning times)',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='od_',
    analyze=analyze, summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'steps': 6, 'batch_size': 50, 'log_every': 2, 'eval_every': 6},
            settings={'depths': (1, 3), 'width': 16, 'threshold': 3.3},
            description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'steps': 1000, 'eval_every': 1000},
            settings={'depths': (1, 2, 4, 8, 16, 32, 64, 128), 'width': 128,
                      'threshold': 1.0, 'seeds': (0, 1, 2)},
            description='depths 1-128, width 128, 1000 steps, three seeds'),
    })
