"""The kept model: its files, loading anywhere, and its NumPy helpers."""

import json
import pathlib
import shutil

import jax
import numpy as np
import optax
import pytest

from fundamentals import checkpoints
from fundamentals import saved_model


def test_the_kept_arrays_are_plain_numpy_and_model_json_says_how_to_use_them(kept_run):
  root = saved_model.directory(kept_run)
  assert sorted(p.name for p in root.iterdir()) == ['best', 'final', 'model.json']
  leaves = checkpoints.restore_arrays(root / 'final')
  # No device placement or sharding is stored: the same files load on any backend.
  assert all(type(x) is np.ndarray for x in leaves)  # pylint: disable=unidiomatic-typecheck
  meta = saved_model.read_meta(kept_run)
  assert meta['image_shape'] == [64, 64, 3] and len(meta['class_names']) == 30
  assert set(meta['normalization']) == {'mean', 'std'}
  assert meta['best_step'] in (10, 20, 30) and meta['final_step'] == 30
  loaded = saved_model.load(kept_run, 'final')
  assert loaded.kind == 'final' and loaded.step == 30
  params = jax.tree.leaves((loaded.params, loaded.batch_stats))
  assert [np.shape(x) for x in params] == [np.shape(x) for x in leaves]


def test_auto_is_best_when_kept_and_a_missing_kind_is_named(kept_run, tmp_path):
  assert saved_model.load(kept_run).kind == 'best'
  copy = tmp_path / 'run'
  shutil.copytree(kept_run, copy)
  meta = json.loads((copy / 'model' / 'model.json').read_text())
  for key in ('best_step', 'best_validation_loss'):
    del meta[key]
  (copy / 'model' / 'model.json').write_text(json.dumps(meta))
  assert saved_model.load(copy).kind == 'final'
  with pytest.raises(ValueError, match='kept no best model.*--validation_fraction'):
    saved_model.load(copy, 'best')
  (copy / 'model' / 'model.json').write_text('{"truncated')
  with pytest.raises(ValueError, match=r'model\.json is damaged'):
    saved_model.load(copy)
  shutil.rmtree(copy / 'model' / 'final')
  (copy / 'model' / 'model.json').write_text(json.dumps(meta))
  with pytest.raises(ValueError, match='cannot read the kept model'):
    saved_model.load(copy, 'final')


def test_images_of_another_shape_are_refused(kept_run):
  with pytest.raises(ValueError, match=r'shape \(32, 32, 3\); the model takes \(64, 64, 3\)'):
    saved_model.logits(saved_model.load(kept_run), np.zeros((2, 32, 32, 3), np.uint8))


def test_softmax_and_cross_entropy_match_optax():
  logits = np.random.default_rng(0).normal(size=(7, 5)) * 30  # Large: stability.
  labels = np.array([0, 4, 2, 2, 1, 3, 0])
  np.testing.assert_allclose(saved_model.softmax(logits), jax.nn.softmax(logits, -1),
                             rtol=1e-5, atol=1e-30)
  assert saved_model.cross_entropy(logits, labels) == pytest.approx(float(np.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))), rel=1e-5)


def test_label_map_matches_classes_by_name(kept_run):
  loaded = saved_model.load(kept_run)
  shuffled = sorted(loaded.class_names)
  mapping = saved_model.label_map(loaded, shuffled)
  assert [loaded.class_names[m] for m in mapping] == shuffled
  with pytest.raises(ValueError, match="not in the model: \\['kiwi'\\]"):
    saved_model.label_map(loaded, [*shuffled[:-1], 'kiwi'])


def test_an_unknown_kind_lists_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match=r"valid: \['final', 'best'\]"):
    saved_model.save(tmp_path, 'latest', None, meta={})
  assert not pathlib.Path(tmp_path / 'model').exists()
