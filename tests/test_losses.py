import math

import numpy as np
import pytest

from fundamentals import losses


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 30)).astype(np.float32) * 3
  labels = rng.integers(0, 30, size=16)
  shifted = logits - logits.max(1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  expected = -log_probs[np.arange(16), labels].mean()
  assert float(losses.softmax_cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('num_classes', [2, 10, 30])
def test_uniform_logits_give_ln_n(num_classes):
  logits = np.full((4, num_classes), 7.0, np.float32)
  labels = np.arange(4) % num_classes
  loss = float(losses.softmax_cross_entropy(logits, labels))
  assert loss == pytest.approx(losses.expected_initial_loss(num_classes), rel=1e-6)
  assert losses.expected_initial_loss(num_classes) == pytest.approx(math.log(num_classes))


def test_confident_wrong_logits_cost_far_more_than_ln_n():
  logits = np.zeros((1, 30), np.float32)
  logits[0, 1] = 20.0
  assert float(losses.softmax_cross_entropy(logits, np.array([0]))) > 5 * math.log(30)


def test_accuracy():
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  assert float(losses.accuracy(logits, np.array([1, 1, 1]))) == pytest.approx(2 / 3)


def test_expected_initial_loss_rejects_fewer_than_two_classes():
  with pytest.raises(ValueError, match='num_classes=1'):
    losses.expected_initial_loss(1)


def test_confusion_matrix_counts_each_true_predicted_pair():
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
  expected = np.zeros((5, 5), np.int64)
  np.add.at(expected, (labels, predictions), 1)
  confusion = losses.confusion_matrix(labels, predictions, 5)
  np.testing.assert_array_equal(confusion, expected)
  assert confusion.sum() == 300
  assert np.trace(confusion) / 300 == pytest.approx(np.mean(labels == predictions))
  with pytest.raises(ValueError, match='predictions hold 5, outside'):
    losses.confusion_matrix([0, 1], [0, 5], 5)
  with pytest.raises(ValueError, match='must be equal'):
    losses.confusion_matrix([0, 1], [0], 5)


def test_per_class_accuracy_is_the_accuracy_on_each_class():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 200)  # class 4 has no examples
  predictions = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 5, 200))
  accuracy = losses.per_class_accuracy(losses.confusion_matrix(labels, predictions, 5))
  np.testing.assert_allclose(accuracy[:4], [np.mean(predictions[labels == k] == k)
                                            for k in range(4)])
  assert np.isnan(accuracy[4])
