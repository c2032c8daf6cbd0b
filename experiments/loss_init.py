"""Initial loss vs ln N: overconfident logits at init, their fix, and the steps wasted.

With uniform predictions p_k = 1/N the cross-entropy is ln N (3.401 nats for N = 30
classes); an output layer whose logits spread by σ across the classes starts above it.
For σ ≪ 1, E[L] ≈ ln N + σ²/2 (second-order expansion of log Σ_k e^{z_k} about equal
logits, the label independent of z; :func:`small_spread_loss`); for σ ≫ 1 the loss
grows like σ, since the softmax then bets everything on the largest logit. Karpathy
(2019, "A recipe for training neural networks": "verify loss @ init") and the course
take the fix: scale the output kernel down at init (``--output_scale``), so that the
first steps learn features instead of shrinking the logits (the "hockey stick").

Members, each a training run: ``--li_inits`` × BatchNorm (``--li_batchnorm`` off, on,
both) × output-kernel scale (``--li_output_scales``), the output kernel drawn with the
hidden layers' scheme at linear gain (``output_init='same'``) and multiplied by the
scale. ``analyze`` rebuilds each member's model at init with ``train.initial_state``
(the very model its run starts from: same seed, same key split) and measures the
logits' spread on the first training examples, in training mode (what the first step
sees), where ``train`` measured the initial loss.

The check compares one pair, the same init and BatchNorm with an unfixed and a fixed
output scale (``--li_check_init``, ``--li_check_batchnorm``, ``--li_unfixed_scale``,
``--li_fixed_scale``): the fixed one starts within 2% of ln N and reaches the target
train loss ln N − ``--li_target_gap`` in fewer steps. Summarizes: ``report.md`` (prose
in ``loss_init.md``), ``initial_loss.png``, ``loss_curves.png``.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fundamentals import data as data_lib
from fundamentals import initializers
from fundamentals import losses
from fundamentals import models
from fundamentals import plots
from fundamentals import rundir
from fundamentals import report
from fundamentals import runner
from fundamentals import train
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

BATCHNORM_SETTINGS = {'off': (False,), 'on': (True,), 'both': (False, True)}
NUM_EXAMPLES = 1024  # As train.measure_initial_loss: the same examples.
NEAR_CHANCE = 0.02  # The fixed model's initial loss within 2% of ln N.
OVERCONFIDENT = 2.0  # The unfixed model's initial loss at least twice ln N.


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  inits: tuple[str, ...] = knob(('normal', 'kaiming'), 'Hidden-kernel initializers '
                                '(normal: N(0, 1)); the output kernel uses the same '
                                'scheme at linear gain.', group='loss_init')
  batchnorm: str = knob('both', 'Without BatchNorm, with it, or both: off, on, both.',
                        group='loss_init')
  output_scales: tuple[float, ...] = knob(
      (1.0, 0.1, 0.01, 0.0), 'Factors on the output kernel at init.', group='loss_init')
  target_gap: float = knob(
      1.0, 'The target train loss is ln N minus this many nats; steps to reach it are '
      'counted on the records (window means of --log_every steps).', group='loss_init')
  check_init: str = knob('normal', 'Init of the checked pair (one of --li_inits).',
                         group='loss_init')
  check_batchnorm: bool = knob(True, 'BatchNorm in the checked pair (allowed by '
                               '--li_batchnorm).', group='loss_init')
  unfixed_scale: float = knob(1.0, 'Output scale of the unfixed model of the checked '
                              'pair (one of --li_output_scales).', group='loss_init')
  fixed_scale: float = knob(0.01, 'Output scale of the fixed model of the checked pair '
                            '(one of --li_output_scales).', group='loss_init')

  def validate(self):
    if not self.inits or not self.output_scales:
      raise ValueError(f'li_inits={list(self.inits)} and li_output_scales='
                       f'{list(self.output_scales)} must each name at least one')
    for name in self.inits:
      initializers.get_scheme(name)
    if self.batchnorm not in BATCHNORM_SETTINGS:
      raise ValueError(f'li_batchnorm={self.batchnorm!r} must be one of '
                       f'{sorted(BATCHNORM_SETTINGS)}')
    if not all(math.isfinite(s) and s >= 0 for s in self.output_scales):
      raise ValueError(f'li_output_scales={list(self.output_scales)} must be finite '
                       'and >= 0')
    if len(set(self.output_scales)) < len(self.output_scales):
      raise ValueError(f'li_output_scales={list(self.output_scales)} repeats a value')
    if not (math.isfinite(self.target_gap) and self.target_gap > 0):
      raise ValueError(f'li_target_gap={self.target_gap} must be a positive number')
    if self.check_init not in self.inits:
      raise ValueError(f'li_check_init={self.check_init!r} must be one of li_inits='
                       f'{list(self.inits)}')
    if self.check_batchnorm not in BATCHNORM_SETTINGS[self.batchnorm]:
      raise ValueError(f'li_check_batchnorm={self.check_batchnorm} is not run with '
                       f'li_batchnorm={self.batchnorm!r}; valid: '
                       f'{list(BATCHNORM_SETTINGS[self.batchnorm])}')
    for name in ('unfixed_scale', 'fixed_scale'):
      if getattr(self, name) not in self.output_scales:
        raise ValueError(f'li_{name}={getattr(self, name)} must be one of '
                         f'li_output_scales={list(self.output_scales)}')
    if self.fixed_scale == self.unfixed_scale:
      raise ValueError(f'li_fixed_scale={self.fixed_scale} must differ from '
                       f'li_unfixed_scale={self.unfixed_scale}')


def member_name(init: str, batchnorm: bool, scale: float) -> str:
  return f'{init}-{"bn" if batchnorm else "nobn"}-scale{scale:g}'


def members(config, s: Settings) -> dict[str, dict]:
  del config  # Every member is the given config but for these.
  return {member_name(init, bn, scale): dict(init=init, batchnorm=bn, output_scale=scale,
                                             output_init='same')
          for init in s.inits for bn in BATCHNORM_SETTINGS[s.batchnorm]
          for scale in s.output_scales}


def logit_spread(logits: np.ndarray) -> float:
  """σ = √(mean_b Var_k z_bk): the std of the logits across classes, root mean square
  over examples. A shift common to an example's logits leaves its softmax unchanged,
  so this, not the std over all entries, is what makes predictions confident."""
  return float(np.sqrt(np.mean(np.var(np.asarray(logits, np.float64), axis=-1))))


def small_spread_loss(num_classes: int, spread: float) -> float:
  """E[L] ≈ ln N + σ²/2 for logits spread by σ ≪ 1 across classes, the label
  independent of them: log Σ_k e^{z_k} = ln N + z̄ + σ²/2 + O(σ³) and E[z_y] = z̄.

  >>> round(small_spread_loss(30, 0.0), 4)
  3.4012
  """
  return losses.expected_initial_loss(num_classes) + spread ** 2 / 2


def analyze(context: runner.Context, member, fit: train.Fit) -> dict:
  """The logits at init of the model the run started from, on the examples whose loss
  ``train`` measured (training mode: batch statistics)."""
  del fit  # Its state is the trained one; the init is rebuilt from the seed.
  dataset = context.dataset
  start = train.initial_state(member.config, dataset)
  x = data_lib.normalize(jnp.asarray(dataset.train_images[:NUM_EXAMPLES]), dataset.mean,
                         dataset.std)
  logits, _ = jax.jit(models.apply, static_argnums=0)(
      start.graphs.train, start.state.params, start.state.batch_stats, x)
  logits = np.asarray(logits, np.float64)
  loss = losses.softmax_cross_entropy(
      jnp.asarray(logits), jnp.asarray(dataset.train_labels[:NUM_EXAMPLES]))
  return {'logit_spread': logit_spread(logits), 'logit_std': float(np.std(logits)),
          'logit_max_abs': float(np.max(np.abs(logits))), 'initial_loss': float(loss),
          'num_examples': int(len(logits))}


def target_loss(context: runner.Context) -> float:
  return (losses.expected_initial_loss(context.dataset.num_classes)
          - context.settings.target_gap)


def _float(value) -> float:
  """A number as JSON holds it (non-finite ones as strings: 'nan', 'inf'); None: NaN."""
  return math.nan if value is None else float(value)


def _value(value, fmt: str = '.4g') -> str:
  return format(value, fmt) if rundir.finite(value) else str(value)


def _steps(steps: int | None, unit: str = '') -> str:
  return 'not reached' if steps is None else f'{steps}{unit}'


def _after(steps: int | None) -> str:
  return 'never (within the run)' if steps is None else f'after {steps} steps'


def _status(r: runner.Result) -> str:
  if r.status == 'completed':
    return _value(r.summary['final_train_loss'], '.4f')
  return f'{r.status} at step {r.summary["diverged_at_step"]}'


def check_pair(s: Settings) -> tuple[str, str]:
  """The (unfixed, fixed) member names of the check."""
  return (member_name(s.check_init, s.check_batchnorm, s.unfixed_scale),
          member_name(s.check_init, s.check_batchnorm, s.fixed_scale))


def check(context: runner.Context, results) -> list[runner.Check]:
  s, expected = context.settings, losses.expected_initial_loss(context.dataset.num_classes)
  target = target_loss(context)
  unfixed, fixed = (results[name] for name in check_pair(s))
  pair = (f'{s.check_init}{" + BN" if s.check_batchnorm else ", no BN"}, output scale '
          f'{s.unfixed_scale:g} (unfixed) vs {s.fixed_scale:g} (fixed)')
  ratio = {r.name: _float(r.summary['initial_loss']) / expected for r in (unfixed, fixed)}
  spread = {r.name: _float(r.output['logit_spread']) for r in (unfixed, fixed)}
  steps = {r.name: report.steps_to_threshold(r.records, target) for r in (unfixed, fixed)}
  faster = steps[fixed.name] is not None and (steps[unfixed.name] is None
                                               or steps[fixed.name] < steps[unfixed.name])
  return [
      runner.Check(
          f'{pair}: the unfixed model is overconfident, initial loss ≥ '
          f'{OVERCONFIDENT:g}·ln N = {OVERCONFIDENT * expected:.3f}',
          f'initial loss {_float(unfixed.summary["initial_loss"]):.3f} (ratio '
          f'{ratio[unfixed.name]:.2f}), logits spread by σ = {spread[unfixed.name]:.3g} '
          'across classes', ratio[unfixed.name] >= OVERCONFIDENT),
      runner.Check(
          f'{pair}: the fixed model starts within {NEAR_CHANCE:.0%} of ln N = '
          f'{expected:.4f}',
          f'initial loss {_float(fixed.summary["initial_loss"]):.4f} (ratio '
          f'{ratio[fixed.name]:.4f}), σ = {spread[fixed.name]:.3g}',
          abs(ratio[fixed.name] - 1) <= NEAR_CHANCE),
      runner.Check(
          f'{pair}: the fixed model reaches the target train loss ln N − '
          f'{s.target_gap:g} = {target:.3f} in fewer steps',
          f'fixed: {_steps(steps[fixed.name], unit=" steps")}, unfixed: '
          f'{_steps(steps[unfixed.name], unit=" steps")} ({unfixed.status})', faster),
  ]


def _cases(results) -> dict[tuple[str, bool], list[runner.Result]]:
  cases = {}
  for r in results.values():
    cases.setdefault((r.config.init, r.config.batchnorm), []).append(r)
  return cases


def _case_title(init: str, batchnorm: bool) -> str:
  return f'{"N(0, 1)" if init == "normal" else init}{" + BN" if batchnorm else ", no BN"}'


def initial_loss_figure(results, expected: float):
  """Initial loss (over ln N) and the logits' spread against the output scale."""
  cases = _cases(results)
  scales = list(dict.fromkeys(r.config.output_scale for r in results.values()))
  fig, axes = plots.figure(1, 2, size=(11, 4), dpi=90)
  loss_ax, spread_ax = axes[0]
  for colour, ((init, bn), rs) in zip(plots.CYCLE, cases.items()):
    x = [scales.index(r.config.output_scale) for r in rs]
    loss_ax.plot(x, [_float(r.summary['initial_loss']) / expected for r in rs], '-o',
                 color=colour, label=_case_title(init, bn))
    spread = [(i, _float(r.output['logit_spread'])) for i, r in zip(x, rs)]
    spread = [(i, v) for i, v in spread if math.isfinite(v) and v > 0]
    if spread:
      spread_ax.plot(*zip(*spread), '-o', color=colour, label=_case_title(init, bn))
  loss_ax.axhline(1, color='gray', linestyle='--', linewidth=1, label='ln N (uniform)')
  loss_ax.axhspan(1 - NEAR_CHANCE, 1 + NEAR_CHANCE, color='gray', alpha=0.2)
  spread_ax.axhline(1, color='gray', linestyle=':', linewidth=1)
  for ax, ylabel in ((loss_ax, 'initial loss / ln N'),
                     (spread_ax, 'logit spread σ at init (0: not drawn)')):
    ax.set_xticks(range(len(scales)), [f'{s:g}' for s in scales])
    ax.set(xlabel='output-kernel scale at init', ylabel=ylabel, yscale='log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  loss_ax.set_title(f'initial loss (ln N = {expected:.3f})')
  spread_ax.set_title('std of the logits across classes')
  return fig


def loss_curves_figure(results, *, expected: float, target: float):
  """Per (init, BN): the train loss of each output scale against steps, from the
  initial loss at step 0; the hockey stick is the overconfident start."""
  cases = _cases(results)
  columns = min(2, len(cases))
  rows = -(-len(cases) // columns)
  fig, axes = plots.figure(rows, columns, size=(6 * columns, 3.8 * rows), dpi=90)
  for ax, ((init, bn), rs) in zip(axes.flat, cases.items()):
    for colour, r in zip(plots.CYCLE, rs):
      points = [(0, _float(r.summary['initial_loss']))] + [
          (rec['step'], rec['train_loss']) for rec in r.records]
      points = [(x, y) for x, y in points if rundir.finite(y)] or [(0, math.nan)]
      label = f'scale {r.config.output_scale:g}' + (
          '' if r.status == 'completed' else f' ({r.status} at '
          f'{r.summary["diverged_at_step"]})')
      ax.plot(*zip(*points), '-', marker='.', ms=3, color=colour, label=label)
    ax.axhline(expected, color='gray', linestyle='--', linewidth=1, label='ln N')
    ax.axhline(target, color='black', linestyle=':', linewidth=1, label='target')
    ax.set(title=_case_title(init, bn), xlabel='step', ylabel='train loss (nats)',
           yscale='log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(cases):]:
    ax.set_visible(False)
  fig.suptitle('Train loss from init (step 0: the measured initial loss)')
  return fig


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  expected = losses.expected_initial_loss(dataset.num_classes)
  target = target_loss(context)
  unfixed, fixed = check_pair(s)
  steps = {name: report.steps_to_threshold(r.records, target) for name, r in results.items()}
  rows, values = [], []
  for name, r in results.items():
    o, summary = r.output, r.summary
    loss, spread = _float(summary['initial_loss']), _float(o['logit_spread'])
    rows.append([
        r.config.init, 'yes' if r.config.batchnorm else 'no', f'{r.config.output_scale:g}',
        _value(loss, '.4f'), _value(loss / expected, '.3f'), _value(spread, '.3g'),
        (_value(small_spread_loss(dataset.num_classes, spread), '.4f')
         if spread < 1.5 else '— (σ ≫ 1)' if math.isfinite(spread) else '—'),
        _steps(steps[name]), _status(r)])
    values.append({'name': name, 'init': r.config.init, 'batchnorm': r.config.batchnorm,
                   'output_scale': r.config.output_scale, 'status': r.status,
                   'initial_loss': loss, 'initial_loss_ratio': loss / expected,
                   'logit_spread': spread, 'steps_to_target': steps[name],
                   'final_train_loss': summary.get('final_train_loss')})
  table = markdown_table(
      ['init', 'BN', 'output scale', 'initial loss', '/ ln N', 'logit σ at init',
       'ln N + σ²/2', f'steps to loss ≤ {target:.2f}', 'final train loss'], rows,
      align='lllrrrrrr')
  if steps[unfixed] is not None and steps[fixed] is not None:
    gap = steps[unfixed] - steps[fixed]
    sooner = 'as fast' if gap == 0 else f'{-gap} steps sooner'
    wasted = (f'The unfixed model spends {gap} more steps getting there: the steps it '
              'wastes shrinking its logits before it learns (the hockey stick of the '
              'loss curves).' if gap > 0 else
              f'Here the unfixed model got there {sooner}: no steps wasted, at the '
              'records\' resolution.')
  else:
    wasted = ('Within this run, ' + ('neither reached it.' if steps[fixed] is None
                                     and steps[unfixed] is None else
                                     f'only `{fixed if steps[unfixed] is None else unfixed}`'
                                     ' reached it.'))
  text = runner.render(
      __file__, config=config, settings=s, dataset=dataset, expected=expected,
      num_train=len(dataset.train_labels), num_test=len(dataset.test_labels),
      hidden=list(config.hidden), num_examples=NUM_EXAMPLES, target=target, table=table,
      unfixed=unfixed, fixed=fixed, unfixed_steps=_after(steps[unfixed]),
      fixed_steps=_after(steps[fixed]), wasted=wasted)
  return runner.Summary(
      'Initial loss vs ln N: overconfident logits and the output-scale fix', text,
      figures={'initial_loss.png': initial_loss_figure(results, expected),
               'loss_curves.png': loss_curves_figure(results, expected=expected,
                                                     target=target)},
      values={'target_loss': target, 'members': values})


DEFAULTS = {'hidden': (256, 256), 'steps': 300, 'log_every': 5, 'eval_every': 300,
            'diagnostics_every': 0}

EXPERIMENT = runner.Experiment(
    name='loss_init',
    description='Initial loss vs ln N over output scales × inits × BN: overconfident '
                'logits, the fix, the steps wasted.',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='li_',
    analyze=analyze, summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(config={'hidden': (16,), 'steps': 20, 'log_every': 5,
                                     'eval_every': 20, 'batch_size': 50},
                             description='a smoke test: seconds'),
        'full': runner.Scale(config={'hidden': (512, 512, 512), 'steps': 1000,
                                     'log_every': 5, 'eval_every': 250},
                             description='three hidden layers of 512, 1000 steps'),
    })
