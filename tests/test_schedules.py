import math

import pytest

from fundamentals import schedules

T, LR = 1000, 0.1


def reference(name, t):
  return {
      'constant': LR,
      'step': LR * 0.1 ** ((t >= 500) + (t >= 750)),
      'exponential': LR * 0.01 ** (t / T),
      'cosine': LR * 0.5 * (1 + math.cos(math.pi * min(t, T) / T)),
  }[name]


@pytest.mark.parametrize('name', sorted(schedules.SCHEDULES))
@pytest.mark.parametrize('t', [0, 1, 250, 499, 500, 749, 750, 999, 1000])
def test_matches_closed_form(name, t):
  schedule = schedules.get_schedule(name, init_value=LR, total_steps=T)
  assert float(schedule(t)) == pytest.approx(reference(name, t), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize('name', sorted(schedules.SCHEDULES))
def test_warmup_ramps_linearly_then_runs_the_schedule(name):
  schedule = schedules.get_schedule(name, init_value=LR, total_steps=T + 100,
                                    warmup_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(50)) == pytest.approx(LR / 2)
  for t in (0, 300, 800):
    assert float(schedule(100 + t)) == pytest.approx(reference(name, t), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize('kwargs, match', [
    (dict(name='cosine', init_value=0.0, total_steps=10), 'init_value=0.0'),
    (dict(name='cosine', init_value=0.1, total_steps=0), 'total_steps=0'),
    (dict(name='cosine', init_value=0.1, total_steps=10, warmup_steps=10), 'warmup_steps=10'),
    (dict(name='linear', init_value=0.1, total_steps=10), "'cosine'"),
])
def test_invalid_arguments_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    schedules.get_schedule(**kwargs)


@pytest.mark.parametrize('total_steps, milestones', [
    (3, (0.5, 0.75)),  # Both fall on step 1.
    (10, (0.51, 0.55)),  # Both on step 5.
    (1000, (0.5, 0.75)),
])
def test_step_milestones_compound_even_on_the_same_step(total_steps, milestones):
  schedule = schedules.step(LR, total_steps, milestones=milestones)
  boundaries = [max(1, int(m * total_steps)) for m in milestones]
  for t in range(total_steps + 1):
    passed = sum(t >= b for b in boundaries)
    assert float(schedule(t)) == pytest.approx(LR * 0.1 ** passed, rel=1e-6)
  assert float(schedule(total_steps)) == pytest.approx(LR * 0.01, rel=1e-6)
