"""The training doctor: rules that read a run and say, in plain words, what is wrong.

A rule is a plain function ``rule(run) -> list[Finding]`` over a :class:`Run` (the
config, the summary, the ``metrics.jsonl`` records and the init/end diagnostics);
``RULES`` is a plain dict of them. A finding is a dict
``{rule, severity, message, evidence, suggestion}``; ``evidence`` holds the numbers
the message rests on. Rules say nothing when their data is missing, so the same rules
run at step 0 (init checks: only the initial loss and the first step's diagnostics)
and at the end of the run.

Thresholds are module constants; they are rules of thumb, sourced where they come
from a paper or a well-known practice.
"""

import dataclasses
import json
import pathlib
import statistics
from typing import Any, Callable

from fundamentals import activations
from fundamentals import diagnostics
from fundamentals import rundir
from fundamentals.config import Config

Finding = dict[str, Any]

SEVERITIES = ('error', 'warning', 'info')

INITIAL_LOSS_HIGH = 1.5
"""Initial loss above 1.5·ln N: confidently wrong logits at init."""
INITIAL_LOSS_LOW = 0.5
"""Initial loss below 0.5·ln N: an untrained model cannot know the labels."""
SATURATION_LIMIT = 0.25
"""More than a quarter of a layer's activations saturated (|tanh z| > 0.97 and the like)."""
DEAD_LIMIT = 0.10
"""More than a tenth of a layer's units dead (≤ 0 on a whole batch)."""
UPDATE_RATIO_TARGET = diagnostics.UPDATE_TO_DATA_TARGET
"""log10(std Δw / std w) ≈ −3: each step moves a weight by ~0.1% of its spread."""
UPDATE_RATIO_LOW = -3.7
"""Below ≈ 2e-4 (5× under the target) the layer learns needlessly slowly."""
UPDATE_RATIO_HIGH = -2.0
"""Above 1e-2 (10× over the target) the layer is rewritten every ~100 steps."""
GRADIENT_RATIO_LIMIT = 10.0
"""std(∂L/∂a) of the first over the last hidden layer outside [1/10, 10]."""
GAP_LIMIT = 0.5
"""Held-out minus training loss above this many nats, and growing: overfitting."""
MIN_DECREASE = 0.1
"""The loss should fall by at least 10% of its initial value over a run."""


@dataclasses.dataclass(frozen=True)
class Run:
  """What the rules read.

  Attributes:
    config: the run's ``Config``.
    summary: ``summary.json`` (at step 0: the initial loss and ln N).
    records: the ``metrics.jsonl`` records, in step order.
    diagnostics: ``{'init': scalars, 'end': scalars}`` from ``diagnostics.json``,
      either key absent when not measured.
  """
  config: Config
  summary: dict[str, Any]
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)


def finding(rule: str, severity: str, message: str, evidence: dict[str, Any],
            suggestion: str) -> Finding:
  if severity not in SEVERITIES:
    raise ValueError(f'severity={severity!r}; valid: {SEVERITIES}')
  return {'rule': rule, 'severity': severity, 'message': message,
          'evidence': evidence, 'suggestion': suggestion}


def initial_loss(run: Run) -> list[Finding]:
  """The untrained model's loss against ln N, the loss of uniform predictions.

  Far above: the logits are large and confidently wrong (init too large, usually the
  output layer); far below: the model knows the labels before training — a leak or a
  bug in the loss or data.
  """
  loss, expected = run.summary.get('initial_loss'), run.summary.get('expected_initial_loss')
  if loss is None or expected is None or not rundir.finite(loss):
    return []
  ratio = loss / expected
  evidence = {'initial_loss': loss, 'expected_initial_loss': expected, 'ratio': ratio}
  if ratio > INITIAL_LOSS_HIGH:
    return [finding(
        'initial_loss', 'warning',
        f'initial loss {loss:.3f} is {ratio:.1f}× ln N = {expected:.3f}: the '
        'untrained network makes large, confidently wrong predictions',
        evidence,
        'scale the last layer down at init (--output_scale=0.1 or 0.01) and use a '
        'fan-in-aware init (--init=kaiming or xavier) or --batchnorm')]
  if ratio < INITIAL_LOSS_LOW:
    return [finding(
        'initial_loss', 'error',
        f'initial loss {loss:.3f} is only {ratio:.2f}× ln N = {expected:.3f}: an '
        'untrained network should not predict the labels',
        evidence,
        'look for a label leak (labels in the inputs, test data in training) or a bug '
        'in the loss')]
  return []


_PHASES = (('init', 'at init'), ('end', 'at the end of training'))


def saturation(run: Run) -> list[Finding]:
  """Saturated tanh/sigmoid units: tanh′ ≈ 0 there, so they pass back no gradient."""
  return _unit_health(
      run, 'saturation', 'saturated_fraction', SATURATION_LIMIT,
      f'saturated {run.config.activation} activations',
      f'within {1 - activations.SATURATION_THRESHOLD:.0%} of an asymptote, where the '
      'derivative is < 6% of its peak: they pass back almost no gradient',
      'make the pre-activations smaller: a fan-in-aware init (--init=xavier, or '
      'kaiming with the tanh gain), --batchnorm, or a lower learning rate if it '
      'grows during training')


def dead_units(run: Run) -> list[Finding]:
  """Dead ReLUs: zero on every example of a batch, so their weights never learn."""
  return _unit_health(
      run, 'dead_units', 'dead_fraction', DEAD_LIMIT,
      f'dead {run.config.activation} units',
      'pre-activation ≤ 0 on the whole batch: no output, no gradient, no learning',
      'use a fan-in-aware init (--init=kaiming), --batchnorm, or a lower learning '
      'rate (a large update can push a unit\'s pre-activation negative for all inputs)')


def _unit_health(run: Run, rule: str, key: str, limit: float, what: str,
                 explanation: str, suggestion: str) -> list[Finding]:
  """One finding naming, per phase, the layers above ``limit``."""
  parts, evidence = [], {'limit': limit}
  for phase, where in _PHASES:
    scalars = run.diagnostics.get(phase)
    if not scalars:
      continue
    fractions = [layer.get(key) for layer in scalars['layers']]
    bad = {f'layer{i}': f for i, f in enumerate(fractions) if rundir.finite(f) and f > limit}
    if bad:
      parts.append(', '.join(f'{layer} {f:.0%}' for layer, f in bad.items()) + f' {where}')
      evidence[phase] = bad
  if not parts:
    return []
  return [finding(rule, 'warning', f'{what}: {"; ".join(parts)} ({explanation})',
                  evidence, suggestion)]


def update_to_data(run: Run) -> list[Finding]:
  """Per weight matrix, the median log10 update:data ratio while lr ≥ half its peak.

  Near −3 is healthy (Karpathy, 2022); below −3.7 the layer barely moves (learning
  rate too low for it, or weights too large); above −2 it is rewritten every ~100
  steps (learning rate too high). The decayed
  tail of a schedule is left out (small updates there are the point), and so is the
  first step's update (momentum has not built up yet).
  """
  records = [r for r in run.records
             if 'diagnostics' in r and r['lr'] >= 0.5 * run.config.lr]
  series: dict[str, list[float]] = {}
  for r in records:
    for name, stats in r['diagnostics']['params'].items():
      if rundir.finite(stats.get('update_to_data')):
        series.setdefault(name, []).append(stats['update_to_data'])
  medians = {name: statistics.median(v) for name, v in series.items() if v}
  low = {n: m for n, m in medians.items() if m < UPDATE_RATIO_LOW}
  high = {n: m for n, m in medians.items() if m > UPDATE_RATIO_HIGH}
  findings = []
  evidence = {'median_log10_update_to_data': medians, 'target': UPDATE_RATIO_TARGET,
              'bounds': [UPDATE_RATIO_LOW, UPDATE_RATIO_HIGH],
              'steps': [r['step'] for r in records]}
  if high:
    findings.append(finding(
        'update_to_data', 'warning',
        f'updates are large: log10(std Δw / std w) = '
        f'{_list(high)} (target ≈ {UPDATE_RATIO_TARGET:.0f}); each step moves these '
        'weights by more than 1% of their spread',
        evidence,
        f'lower the learning rate (--lr={run.config.lr:g} → about '
        f'{run.config.lr * 10 ** (UPDATE_RATIO_TARGET - max(high.values())):.2g}), '
        'or add warmup'))
  if low:
    findings.append(finding(
        'update_to_data', 'warning',
        f'updates are tiny: log10(std Δw / std w) = {_list(low)} '
        f'(target ≈ {UPDATE_RATIO_TARGET:.0f}); these weights barely move',
        evidence,
        f'raise the learning rate (--lr={run.config.lr:g} → about '
        f'{run.config.lr * 10 ** (UPDATE_RATIO_TARGET - min(low.values())):.2g}), '
        'unless the weights themselves are too large for their fan-in (check --init) '
        'or get almost no gradient (check saturation)'))
  return findings


def gradient_flow(run: Run) -> list[Finding]:
  """Exploding or vanishing gradients across depth: std(∂L/∂a) first / last layer.

  In a well-initialized network the backward signal keeps its scale through the
  layers (Glorot & Bengio, 2010; He et al., 2015); a ratio far from 1 means each
  layer multiplies it by a factor away from 1.
  """
  parts, kinds, evidence = [], set(), {'limit': GRADIENT_RATIO_LIMIT}
  for phase, where in _PHASES:
    scalars = run.diagnostics.get(phase)
    if not scalars or len(scalars['layers']) < 2:
      continue
    first = scalars['layers'][0]['activation_grad_std']
    last = scalars['layers'][-1]['activation_grad_std']
    if not (rundir.finite(first) and rundir.finite(last)) or last <= 0:
      continue
    ratio = first / last
    if ratio > GRADIENT_RATIO_LIMIT or ratio < 1 / GRADIENT_RATIO_LIMIT:
      kind = 'exploding' if ratio > 1 else 'vanishing'
      kinds.add(kind)
      parts.append(f'{kind} {where} (first/last = {ratio:.3g})')
      evidence[phase] = {'first_layer_grad_std': first, 'last_layer_grad_std': last,
                         'ratio': ratio, 'depth': len(scalars['layers'])}
  if not parts:
    return []
  return [finding(
      'gradient_flow', 'warning',
      f'gradients {"; ".join(parts)}: std(∂L/∂a) of the first hidden layer against '
      'the last is more than 10× off',
      evidence,
      'use the init that matches the activation (--init=kaiming for ReLU, xavier for '
      'tanh) or --batchnorm'
      + ('; saturated units also block the gradient' if 'vanishing' in kinds else ''))]


def divergence(run: Run) -> list[Finding]:
  """A non-finite loss or gradient: the run stopped and is marked ``diverged``."""
  if run.summary.get('status') != 'diverged':
    return []
  step = run.summary.get('diverged_at_step')
  finite = [r for r in run.records if rundir.finite(r.get('train_loss'))]
  evidence = {'diverged_at_step': step, 'lr': run.config.lr,
              'last_finite_loss': finite[-1]['train_loss'] if finite else None}
  return [finding(
      'divergence', 'error',
      f'training diverged at step {step}: the loss became non-finite and the run '
      'was stopped',
      evidence,
      f'lower the learning rate (--lr={run.config.lr:g} → {run.config.lr / 10:g}), '
      'add warmup (--warmup_steps), or use --batchnorm')]


def overfitting(run: Run) -> list[Finding]:
  """Held-out loss pulling away from the training loss: the gap is large and growing.

  The gap is held-out minus training loss at each evaluation (0 at init, where both
  are ≈ ln N); the final gap uses both splits in evaluation mode.
  """
  split = 'validation' if 'final_validation_loss' in run.summary else 'test'
  gaps = [(r['step'], r[f'{split}_loss'] - r['train_loss']) for r in run.records
          if rundir.finite(r.get(f'{split}_loss')) and rundir.finite(r.get('train_loss'))]
  final_train = run.summary.get('final_train_loss')
  final_held_out = run.summary.get(f'final_{split}_loss')
  if not (rundir.finite(final_train) and rundir.finite(final_held_out)):
    return []
  final_gap = final_held_out - final_train
  earlier = [gap for _, gap in gaps[:-1]] or [0.0]
  if not (final_gap > GAP_LIMIT and final_gap > min(earlier)):
    return []
  evidence = {'split': split, 'final_gap': final_gap, 'gaps': dict(gaps),
              'final_train_loss': final_train, f'final_{split}_loss': final_held_out,
              'final_train_accuracy': run.summary.get('final_train_accuracy'),
              f'final_{split}_accuracy': run.summary.get(f'final_{split}_accuracy')}
  accuracy = ''
  if rundir.finite(evidence['final_train_accuracy']) and rundir.finite(
      evidence[f'final_{split}_accuracy']):
    accuracy = (f' (accuracy {evidence["final_train_accuracy"]:.0%} train vs '
                f'{evidence[f"final_{split}_accuracy"]:.0%} {split})')
  return [finding(
      'overfitting', 'warning',
      f'{split} loss {final_held_out:.3f} vs train {final_train:.3f}: a gap of '
      f'{final_gap:.2f} nats that grew during training{accuracy}',
      evidence,
      'regularize: weight decay (--weight_decay, e.g. 5e-4 with sgd, or '
      '--optimizer=adamw --weight_decay=0.05), data augmentation (--augment), a smaller '
      'model, or early stopping on a validation split ('
      + ('--early_stopping_patience=3: the model of the lowest validation loss is kept'
         if split == 'validation' else
         '--validation_fraction=0.2 --early_stopping_patience=3; choose steps on '
         'validation, never on the test set') + ')')]


def loss_not_decreasing(run: Run) -> list[Finding]:
  """The training loss of the last record is not clearly below the initial loss."""
  records = [r for r in run.records if rundir.finite(r.get('train_loss'))]
  start = run.summary.get('initial_loss')
  if len(records) < 2 or not rundir.finite(start) or run.summary.get('status') == 'diverged':
    return []
  end = records[-1]['train_loss']
  if end < (1 - MIN_DECREASE) * start:
    return []
  return [finding(
      'loss_not_decreasing', 'warning',
      f'the training loss did not decrease: {start:.3f} at init, {end:.3f} at step '
      f'{records[-1]["step"]}',
      {'initial_loss': start, 'final_train_loss': end, 'step': records[-1]['step']},
      'check the learning rate (try 10× up and down), the update:data ratios, and '
      'that the labels match the inputs')]


RULES: dict[str, Callable[[Run], list[Finding]]] = {
    'initial_loss': initial_loss,
    'saturation': saturation,
    'dead_units': dead_units,
    'update_to_data': update_to_data,
    'gradient_flow': gradient_flow,
    'divergence': divergence,
    'overfitting': overfitting,
    'loss_not_decreasing': loss_not_decreasing,
}


def get_rule(name: str) -> Callable[[Run], list[Finding]]:
  """Returns the rule ``name``; raises ValueError listing valid names."""
  try:
    return RULES[name]
  except KeyError:
    raise ValueError(f'Unknown rule {name!r}; valid: {sorted(RULES)}') from None


def examine(run: Run) -> list[Finding]:
  """Every rule's findings, most severe first (errors, warnings, infos)."""
  findings = [f for rule in RULES.values() for f in rule(run)]
  return sorted(findings, key=lambda f: SEVERITIES.index(f['severity']))


def examine_workdir(workdir: str | pathlib.Path) -> list[Finding]:
  """Re-examines a finished run directory from its files."""
  workdir = pathlib.Path(workdir)
  diagnostics_path = workdir / 'diagnostics.json'
  diagnostics = (json.loads(diagnostics_path.read_text())
                 if diagnostics_path.exists() else {})
  return examine(Run(
      config=Config.from_json((workdir / 'config.json').read_text()),
      summary=json.loads((workdir / 'summary.json').read_text()),
      records=rundir.read_jsonl(workdir / 'metrics.jsonl'),
      diagnostics={phase: d['scalars'] for phase, d in diagnostics.items()}))


def format_finding(f: Finding) -> str:
  """One finding as two lines: the message, then the suggested fix."""
  return f'[{f["severity"]}] {f["rule"]}: {f["message"]}\n    fix: {f["suggestion"]}'


def _list(values: dict[str, float]) -> str:
  return ', '.join(f'{v:.1f} ({name})' for name, v in values.items())
