"""Learning-rate schedules: validated factories returning optax schedules ``step -> lr``.

Every schedule takes the peak ``init_value`` and the run's ``total_steps``; an
optional linear warmup from 0 is prepended by :func:`get_schedule`.
"""

from typing import Callable, Sequence

import optax

Schedule = Callable[..., float]


def _check_positive(**values):
  for name, value in values.items():
    if not value > 0:
      raise ValueError(f'{name}={value!r} must be positive')


def constant(init_value: float, total_steps: int) -> Schedule:
  """η_t = η₀."""
  _check_positive(init_value=init_value, total_steps=total_steps)
  return optax.constant_schedule(init_value)


def step(init_value: float, total_steps: int, *, factor: float = 0.1,
         milestones: Sequence[float] = (0.5, 0.75)) -> Schedule:
  """Step decay: η_t = η₀ · factor^(number of milestones passed).

  Milestones are fractions of ``total_steps`` (default: ×0.1 at 50% and 75%), each at
  step max(1, ⌊m·T⌋). Milestones compound: two that fall on the same step (few steps,
  or close fractions) multiply there by factor², so the rate always ends at
  η₀·factor^len(milestones).
  """
  _check_positive(init_value=init_value, total_steps=total_steps, factor=factor)
  if not all(0 < m < 1 for m in milestones):
    raise ValueError(f'{milestones=} must be fractions strictly between 0 and 1')
  boundaries: dict[int, float] = {}
  for m in milestones:
    boundary = max(1, int(m * total_steps))
    boundaries[boundary] = boundaries.get(boundary, 1.0) * factor
  return optax.piecewise_constant_schedule(init_value, boundaries)


def exponential(init_value: float, total_steps: int, *,
                final_ratio: float = 0.01) -> Schedule:
  """Exponential decay: η_t = η₀ · r^(t/T), so η_T = r·η₀ (default r = 0.01)."""
  _check_positive(init_value=init_value, total_steps=total_steps,
                  final_ratio=final_ratio)
  return optax.exponential_decay(init_value, transition_steps=total_steps,
                                 decay_rate=final_ratio)


def cosine(init_value: float, total_steps: int, *, alpha: float = 0.0) -> Schedule:
  """Cosine decay (Loshchilov & Hutter, 2017): η_t = η₀·[α + (1−α)·½(1 + cos(πt/T))]."""
  _check_positive(init_value=init_value, total_steps=total_steps)
  return optax.cosine_decay_schedule(init_value, decay_steps=total_steps, alpha=alpha)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    'constant': constant,
    'step': step,
    'exponential': exponential,
    'cosine': cosine,
}


def get_schedule(name: str, *, init_value: float, total_steps: int,
                 warmup_steps: int = 0) -> Schedule:
  """Returns schedule ``name`` with an optional linear warmup 0 → η₀ over ``warmup_steps``.

  After warmup the named schedule runs over the remaining steps.
  """
  if name not in SCHEDULES:
    raise ValueError(f'Unknown schedule {name!r}; valid: {sorted(SCHEDULES)}')
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(
        f'{warmup_steps=} must be in [0, total_steps={total_steps})')
  main = SCHEDULES[name](init_value, total_steps - warmup_steps)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, init_value, transition_steps=warmup_steps)
  return optax.join_schedules([warmup, main], boundaries=[warmup_steps])
