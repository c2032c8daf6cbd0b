"""Each doctor rule against a constructed run that triggers it and one that does not."""

import json
import math

import pytest

from fundamentals import doctor
from fundamentals.config import Config

LN30 = math.log(30)
TANH = Config(hidden=(32, 16), activation='tanh', init='xavier', steps=400, lr=0.1)
RELU = Config(hidden=(32, 16), activation='relu', steps=400, lr=0.1)


def layer(grad_std=1e-3, **stats):
  return {'activation_mean': 0.0, 'activation_std': 0.6, 'preactivation_std': 1.0,
          'activation_grad_std': grad_std, **stats}


def scalars(layers, update_to_data=-3.0):
  return {'grad_norm': 1.0, 'param_norm': 10.0, 'layers': layers,
          'params': {name: {'weight_std': 0.1, 'grad_std': 1e-3, 'grad_to_data': 1e-2,
                            'update_to_data': update_to_data}
                     for name in ('dense/0/kernel', 'dense/1/kernel', 'output/kernel')}}


def summary(**values):
  return {'status': 'completed', 'initial_loss': LN30, 'expected_initial_loss': LN30,
          **values}


def records(train_losses, *, lr=(0.1,), update_to_data=(-3.0,), test_losses=None):
  """One record per 100 steps, each with diagnostics; lr and ratios cycle."""
  result = []
  for i, loss in enumerate(train_losses):
    r = {'step': 100 * (i + 1), 'train_loss': loss, 'train_accuracy': 0.5,
         'lr': lr[i % len(lr)],
         'diagnostics': scalars([layer(), layer()], update_to_data[i % len(update_to_data)])}
    if test_losses and test_losses[i] is not None:
      r.update(test_loss=test_losses[i], test_accuracy=0.4)
    result.append(r)
  return result


HEALTHY = doctor.Run(TANH, summary(final_train_loss=1.0, final_test_loss=1.2),
                     records([2.5, 1.8, 1.3, 1.0], test_losses=[None, 1.9, None, 1.2]),
                     {'init': scalars([layer(saturated_fraction=0.05)] * 2),
                      'end': scalars([layer(saturated_fraction=0.08)] * 2)})

CASES = {  # rule: (a run that triggers it, a run that does not)
    'initial_loss': (
        doctor.Run(TANH, summary(initial_loss=3.5 * LN30)),
        doctor.Run(TANH, summary(initial_loss=1.1 * LN30))),
    'saturation': (
        doctor.Run(TANH, summary(), diagnostics={
            'init': scalars([layer(saturated_fraction=0.93), layer(saturated_fraction=0.2)])}),
        doctor.Run(TANH, summary(), diagnostics={
            'init': scalars([layer(saturated_fraction=0.2), layer(saturated_fraction=0.1)])})),
    'dead_units': (
        doctor.Run(RELU, summary(), diagnostics={
            'end': scalars([layer(dead_fraction=0.0), layer(dead_fraction=0.4)])}),
        doctor.Run(RELU, summary(), diagnostics={
            'end': scalars([layer(dead_fraction=0.0), layer(dead_fraction=0.05)])})),
    'update_to_data': (
        doctor.Run(TANH, summary(), records([2.0, 1.5, 1.2], update_to_data=(-5.2,))),
        doctor.Run(TANH, summary(), records([2.0, 1.5, 1.2], update_to_data=(-3.3,)))),
    'gradient_flow': (
        doctor.Run(TANH, summary(), diagnostics={
            'init': scalars([layer(grad_std=1e-7), layer(grad_std=1e-3)])}),
        doctor.Run(TANH, summary(), diagnostics={
            'init': scalars([layer(grad_std=5e-4), layer(grad_std=1e-3)])})),
    'divergence': (
        doctor.Run(TANH, summary(status='diverged', diverged_at_step=37),
                   records([2.0, float('nan')])),
        doctor.Run(TANH, summary(), records([2.0, 1.0]))),
    'overfitting': (
        doctor.Run(TANH, summary(final_train_loss=0.01, final_test_loss=1.4,
                                 final_train_accuracy=1.0, final_test_accuracy=0.6),
                   records([1.0, 0.3, 0.05], test_losses=[1.5, 1.3, 1.4])),
        doctor.Run(TANH, summary(final_train_loss=0.9, final_test_loss=1.1),
                   records([1.5, 1.0, 0.9], test_losses=[1.6, 1.2, 1.1]))),
    'loss_not_decreasing': (
        doctor.Run(TANH, summary(), records([3.45, 3.40, 3.38])),
        doctor.Run(TANH, summary(), records([3.0, 2.0, 1.5]))),
}


def test_every_rule_has_a_case():
  assert set(CASES) == set(doctor.RULES)


@pytest.mark.parametrize('name', sorted(doctor.RULES))
def test_rule_fires_on_its_case_only(name):
  triggering, quiet = CASES[name]
  rule = doctor.get_rule(name)
  findings = rule(triggering)
  assert findings, f'{name} did not fire on its triggering run'
  for f in findings:
    assert set(f) == {'rule', 'severity', 'message', 'evidence', 'suggestion'}
    assert f['rule'] == name and f['severity'] in doctor.SEVERITIES
    assert f['message'] and f['suggestion'] and f['evidence']
    json.dumps(f)  # goes into summary.json
  assert rule(quiet) == []


@pytest.mark.parametrize('name', sorted(doctor.RULES))
def test_a_healthy_run_and_an_empty_one_have_no_findings(name):
  assert doctor.get_rule(name)(HEALTHY) == []
  assert doctor.get_rule(name)(doctor.Run(TANH, {})) == []


def test_initial_loss_far_below_ln_n_is_an_error_about_a_leak():
  [f] = doctor.initial_loss(doctor.Run(TANH, summary(initial_loss=0.3 * LN30)))
  assert f['severity'] == 'error' and 'leak' in f['suggestion']
  [f] = doctor.initial_loss(CASES['initial_loss'][0])
  assert f['severity'] == 'warning' and f['evidence']['ratio'] == pytest.approx(3.5)
  assert '--output_scale' in f['suggestion']


def test_saturation_names_the_layers_and_the_phases():
  [f] = doctor.saturation(CASES['saturation'][0])
  assert 'layer0 93% at init (' in f['message'] and 'layer1' not in f['message']
  assert 'end' not in f['message']
  assert f['evidence']['init'] == {'layer0': 0.93}
  both = doctor.Run(TANH, summary(), diagnostics={
      'init': scalars([layer(saturated_fraction=0.93), layer(saturated_fraction=0.2)]),
      'end': scalars([layer(saturated_fraction=0.2), layer(saturated_fraction=0.5)])})
  [f] = doctor.saturation(both)
  assert 'layer0 93% at init; layer1 50% at the end of training' in f['message']


def test_update_to_data_says_which_way_and_ignores_the_schedule_tail():
  [low] = doctor.update_to_data(CASES['update_to_data'][0])
  assert 'tiny' in low['message'] and 'raise the learning rate' in low['suggestion']
  [high] = doctor.update_to_data(doctor.Run(
      TANH, summary(), records([2.0, 1.5], update_to_data=(-1.2,))))
  assert 'large' in high['message'] and 'lower the learning rate' in high['suggestion']
  # A cosine tail (lr → 0) has tiny updates by design: only lr ≥ peak/2 counts.
  decaying = records([2.0, 1.5, 1.2, 1.1], lr=(0.1, 0.09, 0.01, 0.001),
                     update_to_data=(-3.0, -3.1, -4.5, -6.0))
  assert doctor.update_to_data(doctor.Run(TANH, summary(), decaying)) == []


def test_gradient_flow_tells_exploding_from_vanishing():
  [vanishing] = doctor.gradient_flow(CASES['gradient_flow'][0])
  assert 'vanishing' in vanishing['message']
  [exploding] = doctor.gradient_flow(doctor.Run(TANH, summary(), diagnostics={
      'end': scalars([layer(grad_std=0.5), layer(grad_std=1e-3)])}))
  assert 'exploding' in exploding['message']
  one_layer = doctor.Run(TANH, summary(), diagnostics={'init': scalars([layer(1e-9)])})
  assert doctor.gradient_flow(one_layer) == []


def test_overfitting_needs_the_gap_to_grow():
  shrinking = doctor.Run(TANH, summary(final_train_loss=0.1, final_test_loss=1.0),
                         records([1.0, 0.5, 0.1], test_losses=[3.0, 2.0, 1.0]))
  assert doctor.overfitting(shrinking) == []
  [f] = doctor.overfitting(CASES['overfitting'][0])
  assert f['evidence']['final_gap'] == pytest.approx(1.39)
  assert '100% train vs 60% test' in f['message']


def test_examine_puts_errors_first_and_formats_findings():
  run = doctor.Run(TANH, summary(status='diverged', diverged_at_step=5,
                                 initial_loss=4 * LN30))
  findings = doctor.examine(run)
  assert [f['rule'] for f in findings] == ['divergence', 'initial_loss']
  text = doctor.format_finding(findings[0])
  assert text.startswith('[error] divergence: training diverged at step 5')
  assert '\n    fix: lower the learning rate' in text


def test_get_rule_lists_the_valid_names():
  with pytest.raises(ValueError, match='saturation'):
    doctor.get_rule('saturations')
