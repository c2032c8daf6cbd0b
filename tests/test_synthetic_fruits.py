import numpy as np
from PIL import Image
import pytest

from fundamentals import synthetic_fruits as sf


def test_thirty_distinct_classes_of_distinct_families():
  assert sf.NUM_CLASSES == len(set(sf.CLASS_NAMES)) == 30
  families = {tuple(sf.class_prototype(c).values()) for c in range(30)}
  assert len(families) == 30


def test_render_is_deterministic_uint8_and_varies_per_image():
  a = sf.render(3, np.random.default_rng([0, 0, 3]))
  b = sf.render(3, np.random.default_rng([0, 0, 3]))
  c = sf.render(3, np.random.default_rng([0, 0, 33]))
  assert a.shape == (64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


def test_generate_cycles_through_classes_and_splits_differ():
  train = list(sf.generate('train', 2))
  test = list(sf.generate('test', 2))
  assert [label for _, _, label in train] == list(range(30)) * 2
  assert not np.array_equal(train[0][1], test[0][1])
  with pytest.raises(ValueError, match='validation'):
    next(sf.generate('validation', 1))


def test_mean_hue_separates_classes_of_different_hue():
  # The class colour survives the nuisance variation: the fruit's mean colour
  # (pixels far from the background) is closer within a class than across hues.
  def mean_colour(label, seed):
    image = sf.render(label, np.random.default_rng([9, label, seed])).astype(float)
    saturation = image.max(-1) - image.min(-1)
    return image[saturation > np.percentile(saturation, 80)].mean(0)
  red = [mean_colour(0, s) for s in range(5)]
  blue = [mean_colour(7, s) for s in range(5)]
  within = np.mean([np.linalg.norm(a - b) for a in red for b in red if a is not b])
  across = np.mean([np.linalg.norm(a - b) for a in red for b in blue])
  assert across > 2 * within


def test_tfds_stores_the_rendered_pixels_losslessly_through_pillow(tmp_path):
  builder = sf.SyntheticFruits(config='small', data_dir=str(tmp_path))
  key, example = next(builder._generate_examples('test', 1))  # pylint: disable=protected-access
  assert isinstance(example['image'], Image.Image)  # Encoded by Pillow, not TensorFlow.
  feature = builder.info.features['image']
  decoded = feature.decode_example_np(feature.encode_example(example['image']))
  np.testing.assert_array_equal(decoded, sf.render(0, np.random.default_rng([0, 1, key])))
