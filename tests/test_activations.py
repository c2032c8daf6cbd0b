import numpy as np
import pytest

from fundamentals import activations

REFERENCE = {
    'tanh': np.tanh,
    'relu': lambda x: np.maximum(x, 0),
    'identity': lambda x: x,
}


@pytest.mark.parametrize('name', sorted(activations.ACTIVATIONS))
def test_matches_numpy(name):
  x = np.linspace(-4, 4, 101, dtype=np.float32)
  np.testing.assert_allclose(activations.get_activation(name)(x), REFERENCE[name](x),
                             rtol=1e-6, atol=1e-6)


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match="'relu'"):
    activations.get_activation('rleu')
