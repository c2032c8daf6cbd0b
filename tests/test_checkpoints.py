import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundamentals import checkpoints


def state(seed: int):
  keys = jax.random.split(jax.random.key(seed), 2)
  return {'step': jnp.array(seed, jnp.int32),
          'params': {'w': jax.random.normal(keys[0], (3, 2))},
          'key': keys[1]}


def test_save_and_restore_give_back_the_state_with_its_key(tmp_path):
  saved = state(7)
  checkpoints.save(tmp_path, 10, saved, host={'init': {'step': 1}})
  assert checkpoints.latest(tmp_path) == {'step': 10, 'init': {'step': 1}}
  restored = checkpoints.restore(tmp_path, 10, like=state(0))
  np.testing.assert_array_equal(restored['params']['w'], saved['params']['w'])
  assert restored['step'] == 7 and restored['step'].dtype == np.int32
  np.testing.assert_array_equal(jax.random.key_data(restored['key']),
                                jax.random.key_data(saved['key']))
  assert jax.random.uniform(restored['key']) == jax.random.uniform(saved['key'])


def test_only_the_newest_whole_checkpoint_is_kept_and_named(tmp_path):
  checkpoints.save(tmp_path, 10, state(1), host={})
  checkpoints.save(tmp_path, 20, state(2), host={})
  assert sorted(p.name for p in (tmp_path / 'checkpoint').iterdir()) == ['20', 'latest.json']
  # latest.json naming a checkpoint that is not there (killed mid-save): none.
  (tmp_path / 'checkpoint' / 'latest.json').write_text(json.dumps({'step': 30}))
  assert checkpoints.latest(tmp_path) is None
  checkpoints.remove(tmp_path)
  assert checkpoints.latest(tmp_path) is None and not (tmp_path / 'checkpoint').exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
  checkpoints.save(tmp_path, 5, state(1), host={})
  with pytest.raises(ValueError, match='holds 3 arrays; this run has 2'):
    checkpoints.restore(tmp_path, 5, like={'a': jnp.zeros(2), 'b': jnp.zeros(3)})
