"""The learning-rate range test (Smith, 2017, §3.3; fastai's ``lr_find``).

One short run from the configured model's own init in which the learning rate grows
exponentially, η_t = η_min·(η_max/η_min)^(t/(N−1)) for t = 0 … N−1 (Smith increases
it linearly; exponential growth, as fastai's ``lr_find``, gives every decade the same
number of steps). Each step's training loss (of the batch, before its update) is
smoothed by fastai's bias-corrected exponential moving average, and the run stops
once the smoothed loss exceeds ``stop_factor`` × its minimum so far (or is not
finite): the rate has left the useful range. The useful range is read off the curve
of smoothed loss against log η:

* **steepest descent**: the η where d(smoothed loss)/d(log η) is most negative,
  where the loss falls fastest per decade (fastai's ``steep``);
* **minimum/10**: η at the smoothed loss's minimum, divided by 10: the minimum itself
  is already on the edge of divergence (fastai's ``minimum``; Smith's "the maximum
  learning rate bound", backed off).

The run is functional: it trains a copy of the initial state, so the run that
follows (``--lr=auto``, ``runner.resolve_auto_lr``) starts from the original init.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fundamentals import data as data_lib
from fundamentals import optimizers
from fundamentals import train
from fundamentals.config import Config

MIN_LR = 1e-5
MAX_LR = 10.0
NUM_STEPS = 100
SMOOTHING = 0.98
STOP_FACTOR = 4.0


def exponential_lrs(min_lr: float, max_lr: float, num_steps: int) -> np.ndarray:
  """η_t = η_min·(η_max/η_min)^(t/(N−1)), t = 0 … N−1 (float64).

  >>> exponential_lrs(0.01, 1.0, 3).tolist()
  [0.01, 0.1, 1.0]
  """
  if not 0 < min_lr < max_lr or not math.isfinite(max_lr):
    raise ValueError(f'need 0 < min_lr < max_lr < inf; got {min_lr=}, {max_lr=}')
  if num_steps < 3:
    raise ValueError(f'{num_steps=} must be at least 3 (slopes need three points)')
  return min_lr * (max_lr / min_lr) ** (np.arange(num_steps) / (num_steps - 1))


def smooth(losses, beta: float = SMOOTHING) -> np.ndarray:
  """fastai's bias-corrected exponential moving average (``AvgSmoothLoss``).

  a_t = β·a_{t−1} + (1−β)·x_t with a_0 = 0, reported as s_t = a_t/(1−β^t), t = 1, 2, …:
  s_t = Σ_{i≤t} (1−β)β^{t−i} x_i / (1−β^t), a weighted mean of x_1 … x_t whose
  weights sum to 1, so s_1 = x_1 (no pull towards the zero start). Adam's
  bias correction (Kingma & Ba, 2015). A non-finite loss makes every later value
  non-finite.
  """
  if not 0 <= beta < 1:
    raise ValueError(f'smoothing={beta} must be in [0, 1)')
  average, smoothed = 0.0, []
  for t, x in enumerate(np.asarray(losses, np.float64), start=1):
    average = beta * average + (1 - beta) * x
    smoothed.append(average / (1 - beta ** t))
  return np.asarray(smoothed, np.float64)


def stop_index(smoothed, stop_factor: float = STOP_FACTOR) -> int | None:
  """The first step t whose smoothed loss is not finite or exceeds
  ``stop_factor`` × min(s_0 … s_t), the divergence that ends the test; None if none.

  >>> stop_index([3.0, 2.0, 1.0, 3.9, 4.1])
  4
  """
  if not stop_factor > 1:
    raise ValueError(f'{stop_factor=} must exceed 1')
  best = math.inf
  for t, value in enumerate(np.asarray(smoothed, np.float64)):
    if not math.isfinite(value):
      return t
    best = min(best, value)
    if value > stop_factor * best:
      return t
  return None


@dataclasses.dataclass(frozen=True)
class Suggestions:
  """What the curve suggests (indices into the range test's steps).

  Attributes:
    steepest: η of the steepest descent against log η of the smoothed loss's
      running minimum (:func:`suggestions`); None when the loss never falls.
    steepest_index: its step.
    steepest_slope: d(smoothed loss)/d(ln η) there (nats per e-fold of η).
    minimum: η at the smoothed loss's minimum.
    minimum_index: its step.
  """
  steepest: float | None
  steepest_index: int | None
  steepest_slope: float | None
  minimum: float
  minimum_index: int

  @property
  def minimum_over_10(self) -> float:
    return self.minimum / 10


def suggestions(lrs, smoothed, *, skip_start: int = 0) -> Suggestions:
  """The steepest descent and minimum of a smoothed loss curve ``smoothed`` at ``lrs``.

  The slope is taken against u = ln η, d s/d u by ``np.gradient(s, u)`` (second-order
  central differences that weigh the actual spacing of the u's), so unevenly spaced
  rates are handled: a per-step difference would favour wherever the rates are
  spaced widely. Two guards keep it from being fooled by a spike, which a smoothed
  curve turns into a sharp rise and a steep fall back:

  * the first ``skip_start`` points are left out (fastai skips the first 10%): the
    bias-corrected average of the first few losses follows every one of them;
  * the slope is that of the curve's running minimum m_t = min(s_skip … s_t), the
    best loss reached so far: a spike and its fall back to where the loss was are
    flat there, and only descent to new lows counts, which also keeps the steepest
    point before the minimum (after it m_t is flat).

  Only the finite prefix of the curve is read (a diverged last step is dropped).

  Args:
    lrs: the learning rates, increasing (any spacing).
    smoothed: the smoothed loss at each.
    skip_start: how many first points to leave out.
  """
  lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
  if lrs.shape != smoothed.shape or lrs.ndim != 1:
    raise ValueError(f'lrs {lrs.shape} and smoothed {smoothed.shape} must be equal-length '
                     'vectors')
  if not np.all(lrs > 0) or not np.all(np.diff(lrs) > 0):
    raise ValueError('lrs must be positive and increasing')
  finite = np.isfinite(smoothed)
  end = len(smoothed) if finite.all() else int(np.argmin(finite))
  if end - skip_start < 3:
    raise ValueError(f'{end - skip_start} finite points after skip_start={skip_start}; '
                     'slopes need at least 3 (more steps, or a smaller skip_start)')
  u, curve = np.log(lrs[skip_start:end]), smoothed[skip_start:end]
  minimum = int(np.argmin(curve))
  slopes = np.gradient(np.minimum.accumulate(curve), u)
  steepest = int(np.argmin(slopes[:minimum + 1]))
  falls = slopes[steepest] < 0
  return Suggestions(
      steepest=float(lrs[skip_start + steepest]) if falls else None,
      steepest_index=skip_start + steepest if falls else None,
      steepest_slope=float(slopes[steepest]) if falls else None,
      minimum=float(lrs[skip_start + minimum]), minimum_index=skip_start + minimum)


@dataclasses.dataclass(frozen=True)
class RangeTest:
  """One range test: per step t, the rate, the batch's loss and its smoothed value.

  ``stopped_at``: the step at which the stop rule ended it (its values are the
  last), None if it ran all ``num_steps``.
  """
  lrs: np.ndarray
  losses: np.ndarray
  smoothed: np.ndarray
  stopped_at: int | None
  num_steps: int
  skip_start: int
  suggestions: Suggestions

  def to_dict(self) -> dict[str, Any]:
    return {'lrs': self.lrs.tolist(), 'losses': self.losses.tolist(),
            'smoothed': self.smoothed.tolist(), 'stopped_at': self.stopped_at,
            'num_steps': self.num_steps, 'skip_start': self.skip_start,
            'suggestions': dataclasses.asdict(self.suggestions)}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'RangeTest':
    arrays = {k: np.asarray(values[k], np.float64) for k in ('lrs', 'losses', 'smoothed')}
    return cls(**arrays, stopped_at=values['stopped_at'], num_steps=values['num_steps'],
               skip_start=values['skip_start'],
               suggestions=Suggestions(**values['suggestions']))


def _with_hyperparameters(opt_state, **values):
  """``opt_state`` (``optax.inject_hyperparams``) with these hyperparameter values."""
  hyperparams = dict(opt_state.hyperparams)
  for name, value in values.items():
    hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
  return opt_state._replace(hyperparams=hyperparams)


def range_test(config: Config, dataset: data_lib.Dataset, *, min_lr: float = MIN_LR,
               max_lr: float = MAX_LR, num_steps: int = NUM_STEPS,
               smoothing: float = SMOOTHING, stop_factor: float = STOP_FACTOR,
               skip_start: int | None = None,
               start: train.Start | None = None) -> RangeTest:
  """Runs the range test (module docstring) on ``config``'s model; returns its curve.

  The model, its init and the batches are the run's own: ``train.initial_state``
  (the same key split, LSUV included) and the epochs' permutations, with the
  config's augmentations and batch size. The optimizer is SGD with the config's
  momentum (v ← g + μv, θ ← θ − η_t v) whatever ``config.optimizer`` and schedule
  say, η_t set at each step; the step is training's own compiled step
  (``train.compiled_steps``, η and μ values of its state).

  Args:
    config: the run to find a rate for (its ``lr`` and schedule are not used).
    dataset: its data.
    min_lr, max_lr: the first and last rates.
    num_steps: N, steps from ``min_lr`` to ``max_lr``.
    smoothing: β of :func:`smooth`.
    stop_factor: :func:`stop_index`'s factor.
    skip_start: points the suggestions leave out (default N//10, as fastai).
    start: the initial state to start from (default ``train.initial_state``); it is
      not changed (a copy trains).
  """
  lrs = exponential_lrs(min_lr, max_lr, num_steps)
  skip_start = num_steps // 10 if skip_start is None else skip_start
  if not 0 <= skip_start <= num_steps - 3:
    raise ValueError(f'{skip_start=} must be in [0, num_steps - 3 = {num_steps - 3}]')
  smooth([], smoothing)  # Validates β and the factor before any work.
  stop_index([], stop_factor)
  train.check_fits(config, dataset)
  # The run's own optimizer (its lr a state value, swept step by step); the
  # hand-written one (lr a constant of the program) is probed as optax SGD.
  in_state = optimizers.get_optimizer(config.optimizer).hyperparameters_in_state
  probe = dataclasses.replace(config, optimizer=config.optimizer if in_state else 'sgd',
                              schedule='constant', warmup_steps=0, lr=min_lr,
                              diagnostics_every=0)
  start = start if start is not None else train.initial_state(probe, dataset)
  tx = optimizers.create(probe)[0]
  state = jax.tree.map(jnp.copy, start.state._replace(opt_state=None))
  state = state._replace(opt_state=tx.init(state.params))
  steps = train.compiled_steps(start.graphs, train.canonical_config(probe))
  images, labels = jax.device_put(dataset.train_images), jax.device_put(dataset.train_labels)
  mean, std = jax.device_put(np.asarray(dataset.mean)), jax.device_put(np.asarray(dataset.std))
  epoch_perm = lambda epoch: train.epoch_permutation(start.shuffle_key, epoch, len(labels))
  losses, stopped_at = [], None
  for step, perm, position in train.batch_order(
      epoch_perm, steps_per_epoch=len(labels) // config.batch_size, start=0,
      stop=num_steps):
    state = state._replace(opt_state=_with_hyperparameters(state.opt_state,
                                                           learning_rate=lrs[step]))
    state, metrics = steps.train(state, images, labels, perm, position, mean, std)
    losses.append(float(metrics['loss']))
    # The average is recomputed in full (N ≤ a few hundred): one definition.
    if stop_index(smooth(losses, smoothing), stop_factor) is not None:
      stopped_at = step
      break
  losses = np.asarray(losses, np.float64)
  smoothed = smooth(losses, smoothing)
  done = int(np.sum(np.isfinite(smoothed)))
  if done < 3:
    raise ValueError(f'the range test diverged at step {stopped_at} (lr={lrs[stopped_at]:.3g}) '
                     f'with too few points to read; lower min_lr={min_lr:g}')
  skip_start = min(skip_start, done - 3)  # A test stopped early keeps three points.
  return RangeTest(lrs[:len(losses)], losses, smoothed, stopped_at, num_steps, skip_start,
                   suggestions(lrs[:len(losses)], smoothed, skip_start=skip_start))


def choose(test: RangeTest) -> tuple[float, str]:
  """The rate to train at, from a range test, and a line saying how it was chosen.

  The rule: the steepest descent (fastai's ``steep``, its default before ``valley``),
  or minimum/10 when the loss never fell. Why: it is where the loss falls fastest
  per decade of η, so learning is fast there, and it lies below the minimum, past
  which steps overshoot. minimum/10 is the safer of the two but can be timid: on this
  course's 128×128 ReLU MLP (500 steps, cosine; ``--experiment=lr_range_test``)
  without BatchNorm the steepest point (0.019) lay beside the grid's best rate (0.03)
  and minimum/10 (0.0033) a decade below it; with BatchNorm both were near the best
  (steepest 0.15, minimum/10 0.093, best 0.1).
  """
  s = test.suggestions
  if s.steepest is None:
    return s.minimum_over_10, (f'the smoothed loss never fell; minimum/10 = '
                               f'{s.minimum_over_10:.3g}')
  return s.steepest, (f'steepest descent of the smoothed loss at {s.steepest:.3g}; '
                      f'minimum/10 = {s.minimum_over_10:.3g}')


def suggest(config: Config, dataset: data_lib.Dataset, **options) -> tuple[float, str]:
  """The range test's suggested rate for ``config`` and how it was chosen
  (:func:`range_test` with ``options``, then :func:`choose`)."""
  return choose(range_test(config, dataset, **options))
