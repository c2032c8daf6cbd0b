"""The optimizer registry against optax's own optimizers and closed forms."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import SMALL
from fundamentals import models
from fundamentals import optimizers
from fundamentals import rundir
from fundamentals import runtime
from fundamentals import train
from fundamentals.config import Config

STEPS, LR = 15, 0.05
# Which parameters of the tiny problem decay, written out (not ``weight_decay_mask``).
MASK = {'hidden': {'kernel': True, 'bias': False}, 'norm': {'scale': False, 'bias': False},
        'output': {'kernel': True}}


def _reference(case):
  """optax's own optimizer for a case, on optax's own cosine schedule."""
  lr = optax.cosine_decay_schedule(LR, STEPS)
  clip, decay = case.get('grad_clip_norm'), case.get('weight_decay')
  pre = [optax.clip_by_global_norm(clip)] if clip else []
  name = case.get('optimizer', 'sgd')
  if name in ('sgd', 'manual_sgd'):
    momentum = case.get('momentum', 0.9) or None
    pre += [optax.add_decayed_weights(decay, MASK)] if decay else []
    return optax.chain(*pre, optax.sgd(lr, momentum,
                                       nesterov=case.get('nesterov', False)))
  adam = dict(b1=case.get('adam_b1', 0.9), b2=case.get('adam_b2', 0.999),
              eps=case.get('adam_eps', 1e-8))
  if name == 'adamw':
    return optax.chain(*pre, optax.adamw(lr, **adam, weight_decay=decay or 0.0,
                                         mask=MASK))
  pre += [optax.add_decayed_weights(decay, MASK)] if decay else []
  return optax.chain(*pre, optax.adam(lr, **adam))


CASES = {
    'sgd': dict(),
    'sgd_plain': dict(momentum=0.0),
    'sgd_nesterov': dict(nesterov=True),
    'sgd_l2_clip': dict(momentum=0.0, weight_decay=0.1, grad_clip_norm=1.5),
    'sgd_nesterov_l2_clip': dict(nesterov=True, weight_decay=0.1, grad_clip_norm=1.5),
    'adam': dict(optimizer='adam', adam_b1=0.8, adam_b2=0.99, adam_eps=1e-6),
    'adam_l2_clip': dict(optimizer='adam', weight_decay=0.1, grad_clip_norm=1.5),
    'adamw': dict(optimizer='adamw', weight_decay=0.1, adam_b2=0.95),
    'adamw_clip': dict(optimizer='adamw', weight_decay=0.1, grad_clip_norm=1.5),
    'adamw_no_decay': dict(optimizer='adamw'),
    'manual_sgd': dict(optimizer='manual_sgd'),
}


def test_every_registry_entry_has_a_reference_case():
  assert {case.get('optimizer', 'sgd') for case in CASES.values()} == set(
      optimizers.OPTIMIZERS)


def _tiny_problem():
  """Parameters and a loss with a hidden layer, a 'BatchNorm' scale/shift and biases."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 2))
  params = {'hidden': {'kernel': rng.normal(size=(3, 4)), 'bias': rng.normal(size=4)},
            'norm': {'scale': 1 + 0.1 * rng.normal(size=4), 'bias': rng.normal(size=4)},
            'output': {'kernel': rng.normal(size=(4, 2))}}

  def loss(p):
    h = jnp.tanh(x @ p['hidden']['kernel'] + p['hidden']['bias'])
    h = h * p['norm']['scale'] + p['norm']['bias']
    return 0.5 * jnp.mean(jnp.sum((h @ p['output']['kernel'] - y) ** 2, -1))

  return jax.tree.map(jnp.asarray, params), jax.grad(loss)


@pytest.mark.parametrize('name', sorted(CASES))
def test_trajectory_equals_optax(name):
  case = CASES[name]
  with jax.enable_x64(True):
    params, grad = _tiny_problem()
    ours, _ = optimizers.create(Config(lr=LR, steps=STEPS, schedule='cosine', **case))
    theirs = _reference(case)
    mine, reference = params, params
    state, reference_state = ours.init(params), theirs.init(params)
    norms = []
    for _ in range(STEPS):
      g = grad(mine)
      norms.append(float(optax.tree.norm(g)))
      updates, state = ours.update(g, state, mine)
      mine = optax.apply_updates(mine, updates)
      updates, reference_state = theirs.update(grad(reference), reference_state, reference)
      reference = optax.apply_updates(reference, updates)
      for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(reference)):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  assert not np.allclose(jax.tree.leaves(mine)[0], jax.tree.leaves(params)[0])  # It moved.
  if case.get('grad_clip_norm'):  # Some steps are clipped, some are not.
    assert min(norms) < case['grad_clip_norm'] < max(norms)


def _mlp_params(batchnorm: bool):
  """A tiny MLP's parameters, all shifted off 0 and 1 so that an unchanged one shows."""
  model = models.create_model(Config(hidden=(4,), batchnorm=batchnorm), num_features=3,
                              num_classes=2, key=jax.random.key(0))
  params = nnx.state(model, nnx.Param)
  return jax.tree.map(lambda p: p + 0.5, params)


def _decayed_paths(params):
  return sorted(jax.tree_util.keystr(path) for path, decays in
                jax.tree_util.tree_flatten_with_path(optimizers.weight_decay_mask(params))[0]
                if decays)


@pytest.mark.parametrize('batchnorm', [True, False])
def test_only_kernels_decay(batchnorm):
  params = _mlp_params(batchnorm)
  assert _decayed_paths(params) == ["['dense'][0]['kernel'].value",
                                    "['output']['kernel'].value"]
  # The rest: BN's scale and shift and the output bias, or the two biases.
  assert len(jax.tree.leaves(params)) == (5 if batchnorm else 4)


@pytest.mark.parametrize('name', sorted(
    n for n, o in optimizers.OPTIMIZERS.items() if 'weight_decay' in o.reads))
@pytest.mark.parametrize('batchnorm', [True, False])
def test_weight_decay_leaves_biases_and_batchnorm_untouched(name, batchnorm):
  """With zero gradients, the decay is the only change: kernels move, the rest not."""
  params = _mlp_params(batchnorm)
  tx, _ = optimizers.create(Config(optimizer=name, weight_decay=0.1, lr=0.1))
  zeros = jax.tree.map(jnp.zeros_like, params)
  state, new = tx.init(params), params
  for _ in range(3):
    updates, state = tx.update(zeros, state, new)
    new = optax.apply_updates(new, updates)
  decayed = _decayed_paths(params)
  for (path, before), after in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                   jax.tree.leaves(new)):
    if jax.tree_util.keystr(path) in decayed:
      assert np.all(np.abs(after) < np.abs(before)), path
    else:
      np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize('name, schedule', [('sgd', 'constant'), ('sgd', 'cosine'),
                                            ('adamw', 'constant'), ('adamw', 'cosine')])
def test_weight_decay_with_zero_gradients_is_the_closed_form(name, schedule):
  """θ_t = θ_0·Π_{s<t}(1 − η_s·λ): for plain SGD's L2 decay (g = λθ, momentum 0) and
  for AdamW's decoupled decay (m̂ = 0, so Adam's step is 0); constant η: (1 − ηλ)^t."""
  lr, decay, steps = 0.1, 0.3, 8
  tx, _ = optimizers.create(Config(optimizer=name, lr=lr, weight_decay=decay, steps=steps,
                                   schedule=schedule, momentum=0.0 if name == 'sgd' else 0.9))
  with jax.enable_x64(True):
    kernel = jnp.asarray(np.linspace(-2.0, 2.0, 6).reshape(2, 3))
    params = {'kernel': kernel, 'bias': jnp.ones(3)}
    state = tx.init(params)
    for _ in range(steps):
      updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
      params = optax.apply_updates(params, updates)
  t = np.arange(steps)
  rates = (np.full(steps, lr) if schedule == 'constant'
           else lr * 0.5 * (1 + np.cos(np.pi * t / steps)))
  np.testing.assert_allclose(params['kernel'], np.asarray(kernel) * np.prod(1 - rates * decay),
                             rtol=1e-12)
  if schedule == 'constant':
    np.testing.assert_allclose(params['kernel'], np.asarray(kernel) * (1 - lr * decay) ** steps,
                               rtol=1e-12)
  np.testing.assert_array_equal(params['bias'], np.ones(3))


# Members that differ in these values (all nonzero) share one structure.
VALUES = {'sgd': dict(lr=0.07, momentum=0.5, weight_decay=3e-3, grad_clip_norm=2.0),
          'adam': dict(lr=0.07, adam_b1=0.8, adam_b2=0.99, adam_eps=1e-6,
                       weight_decay=3e-3, grad_clip_norm=2.0),
          'adamw': dict(lr=0.07, adam_b1=0.8, adam_b2=0.99, adam_eps=1e-6,
                        weight_decay=3e-3, grad_clip_norm=2.0)}


@pytest.mark.parametrize('name', sorted(VALUES))
def test_hyperparameters_are_values_of_one_compiled_update(name):
  base = Config(optimizer=name, weight_decay=1e-4, grad_clip_norm=1.0, hidden=(4,))
  other = dataclasses.replace(base, **VALUES[name])
  assert train.canonical_config(base) == train.canonical_config(other)
  for zero in ('weight_decay', 'grad_clip_norm') + (('momentum',) if name == 'sgd' else ()):
    assert train.canonical_config(dataclasses.replace(base, **{zero: 0.0})) != (
        train.canonical_config(base)), zero
  # The canonical optimizer, compiled once, makes each member's own updates.
  params, grad = _tiny_problem()
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  canonical, _ = optimizers.create(train.canonical_config(base))

  @jax.jit
  def canonical_update(grads, state, params):
    return canonical.update(grads, state, params)

  grads, results = grad(params), []
  for config in (base, other):
    tx, _ = optimizers.create(config)
    state = tx.init(params)
    with runtime.compile_log() as compiles:
      results.append(canonical_update(grads, state, params))
    assert len([n for n, _ in compiles if 'canonical_update' in n]) == (
        1 if config is base else 0)
    expected = jax.jit(tx.update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(results[-1]), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)
  assert not np.allclose(jax.tree.leaves(results[0][0])[0], jax.tree.leaves(results[1][0])[0])
  # And so the train step: one entry of train.compiled_steps for both.
  model = models.create_model(base, num_features=3, num_classes=2, key=jax.random.key(0))
  graphs, _ = train.split_model(model, canonical)
  assert train.compiled_steps(graphs, train.canonical_config(base)) is (
      train.compiled_steps(graphs, train.canonical_config(other)))


def test_structure_nesterov_and_the_optimizer_itself():
  base = Config()
  for change in (dict(nesterov=True), dict(optimizer='adam'), dict(optimizer='adamw'),
                 dict(optimizer='manual_sgd')):
    assert train.canonical_config(dataclasses.replace(base, **change)) != (
        train.canonical_config(base)), change
  # manual_sgd keeps its hyperparameters as constants of the program.
  manual = dataclasses.replace(base, optimizer='manual_sgd')
  assert train.canonical_config(manual) != train.canonical_config(
      dataclasses.replace(manual, lr=0.07))


def test_the_default_chain_has_no_decay_or_clip_transform():
  """The default run (λ = c = 0) makes plain optax.sgd's updates, bit for bit, with
  η and μ the only hyperparameters of its state."""
  tx, _ = optimizers.create(Config(steps=50))
  reference = optax.sgd(optax.cosine_decay_schedule(0.05, 50), momentum=0.9)
  params = {'kernel': jnp.linspace(-1.0, 1.0, 7)}
  state, theirs = tx.init(params), reference.init(params)
  assert set(state.hyperparams) == {'learning_rate', 'momentum'}
  assert len(state.inner_state) == 2  # trace, scale_by_schedule.
  for step in range(20):
    grads = {'kernel': jnp.sin(params['kernel'] * (step + 1))}
    a, state = tx.update(grads, state, params)
    b, theirs = reference.update(grads, theirs, params)
    np.testing.assert_array_equal(a['kernel'], b['kernel'])
    params = optax.apply_updates(params, a)


def test_train_with_adamw_learns_and_records_its_hyperparameters(tmp_path, small_dataset):
  config = Config(dataset=SMALL, hidden=(16,), batch_size=50, steps=20, log_every=5,
                  eval_every=20, diagnostics_every=0, checkpoint_every=0, lr=1e-2,
                  optimizer='adamw', weight_decay=0.05, grad_clip_norm=5.0, adam_b2=0.99,
                  workdir=str(tmp_path / 'adamw'))
  fit = train.fit(config, dataset=small_dataset, echo=lambda line: None)
  assert fit.summary['status'] == 'completed'
  records = rundir.read_jsonl(tmp_path / 'adamw' / 'metrics.jsonl')
  assert records[-1]['train_loss'] < records[0]['train_loss'] - 0.1  # Nats, steps 5 → 20.
  assert fit.summary['final_test_loss'] < fit.summary['initial_loss']
  written = json.loads((tmp_path / 'adamw' / 'config.json').read_text())
  assert {k: written[k] for k in ('optimizer', 'weight_decay', 'grad_clip_norm', 'adam_b1',
                                  'adam_b2', 'adam_eps', 'nesterov')} == {
      'optimizer': 'adamw', 'weight_decay': 0.05, 'grad_clip_norm': 5.0, 'adam_b1': 0.9,
      'adam_b2': 0.99, 'adam_eps': 1e-8, 'nesterov': False}
  assert Config.from_dict(written) == config
  hyperparams = fit.state.opt_state.hyperparams
  assert float(hyperparams['weight_decay']) == pytest.approx(0.05)
  assert float(hyperparams['b2']) == pytest.approx(0.99)


@pytest.mark.parametrize('overrides, match', [
    (dict(optimizer='lbfgs'),
     r"Unknown optimizer 'lbfgs'; valid: \['adam', 'adamw', 'manual_sgd', 'sgd'\]"),
    (dict(momentum=1.0), r'momentum=1.0 must be in \[0, 1\)'),
    (dict(weight_decay=-0.1), 'weight_decay=-0.1 must be finite and >= 0'),
    (dict(weight_decay=float('nan')), 'weight_decay=nan must be finite and >= 0'),
    (dict(grad_clip_norm=-1.0), 'grad_clip_norm=-1.0 must be finite and >= 0'),
    (dict(grad_clip_norm=float('inf')), 'grad_clip_norm=inf must be finite'),
    (dict(optimizer='adam', adam_b1=1.0), r'adam_b1=1.0 must be in \[0, 1\)'),
    (dict(optimizer='adamw', adam_b2=-0.1), r'adam_b2=-0.1 must be in \[0, 1\)'),
    (dict(optimizer='adam', adam_eps=0.0), 'adam_eps=0.0 must be finite and > 0'),
    (dict(nesterov=True, momentum=0.0), 'nesterov=True needs momentum > 0'),
    (dict(optimizer='adam', nesterov=True),
     "nesterov=True does not apply to optimizer='adam'"),
    (dict(adam_b2=0.99), (r"adam_b2=0.99 does not apply to optimizer='sgd'.*\['adam', "
                          r"'adamw'\]: leave it at its default 0.999")),
    (dict(optimizer='adamw', momentum=0.5),
     "momentum=0.5 does not apply to optimizer='adamw'"),
    (dict(optimizer='manual_sgd', weight_decay=1e-4),
     "weight_decay=0.0001 does not apply to optimizer='manual_sgd'"),
    (dict(optimizer='manual_sgd', grad_clip_norm=1.0),
     "grad_clip_norm=1.0 does not apply to optimizer='manual_sgd'"),
    (dict(optimizer='manual_sgd', nesterov=True),
     "nesterov=True does not apply to optimizer='manual_sgd'"),
])
def test_bad_settings_are_refused_naming_the_value(overrides, match):
  with pytest.raises(ValueError, match=match):
    Config(**overrides)


@pytest.mark.parametrize('name', sorted(optimizers.OPTIMIZERS))
def test_other_optimizers_knobs_at_their_defaults_are_ignored(name):
  config = Config(optimizer=name)  # momentum=0.9 and adam_b2=0.999 are defaults.
  tx, _ = optimizers.create(config)
  state = tx.init({'kernel': jnp.ones(2)})
  if optimizers.get_optimizer(name).hyperparameters_in_state:
    reads = optimizers.get_optimizer(name).reads
    names = {'lr': 'learning_rate', 'adam_b1': 'b1', 'adam_b2': 'b2', 'adam_eps': 'eps'}
    # Off (0) transforms have no hyperparameter; the rest are what it reads.
    assert set(state.hyperparams) == {names.get(k, k) for k in reads
                                      if getattr(config, k) and k != 'nesterov'}
