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
  checkpoints.save(tmp_path, 10, saved, host={'status': 'completed'})
  assert checkpoints.available(tmp_path) == {10: {'step': 10, 'status': 'completed'}}
  restored = checkpoints.from_raw_leaves(checkpoints.restore_leaves(tmp_path, 10),
                                         like=state(0))
  np.testing.assert_array_equal(restored['params']['w'], saved['params']['w'])
  assert restored['step'] == 7 and restored['step'].dtype == np.int32
  np.testing.assert_array_equal(jax.random.key_data(restored['key']),
                                jax.random.key_data(saved['key']))
  assert jax.random.uniform(restored['key']) == jax.random.uniform(saved['key'])


def test_older_checkpoints_go_only_when_pruned_and_half_saved_ones_do_not_count(tmp_path):
  checkpoints.save(tmp_path, 10, state(1), host={})
  checkpoints.save(tmp_path, 20, state(2), host={})
  assert sorted(checkpoints.available(tmp_path)) == [10, 20]  # A group prunes last.
  checkpoints.prune(tmp_path, keep=20)
  assert sorted(p.name for p in (tmp_path / 'checkpoint').iterdir()) == ['20', '20.json']
  (tmp_path / 'checkpoint' / '30').mkdir()  # Killed before its host file was written.
  assert sorted(checkpoints.available(tmp_path)) == [20]
  checkpoints.remove(tmp_path)
  assert checkpoints.available(tmp_path) == {} and not (tmp_path / 'checkpoint').exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
  checkpoints.save(tmp_path, 5, state(1), host={})
  with pytest.raises(ValueError, match='a different model or optimizer'):
    checkpoints.from_raw_leaves(checkpoints.restore_leaves(tmp_path, 5),
                                like={'a': jnp.zeros(2), 'b': jnp.zeros(3), 'c': jnp.zeros(1)})
