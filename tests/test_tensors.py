import numpy as np
import pytest

from lpu.host.tensors import QuantLinear


def test_dequantize_per_tensor_and_groups():
    w = np.array([[1, 0, -1, 1], [0, 0, 1, -1]])
    lin = QuantLinear("a", w, np.float32(0.5))
    assert np.array_equal(lin.dequantize(), w * 0.5)
    lin = QuantLinear("b", w, np.array([[1.0, 2.0], [3.0, 4.0]]), group_size=2)
    assert np.array_equal(lin.dequantize(), w * np.array([[1, 1, 2, 2], [3, 3, 4, 4]]))


@pytest.mark.parametrize("kwargs, msg", [
    ({"weights": np.array([[2, 0]])},
     r"^Weights of q must be in \{0, 1, -1\} for ternary mode, not 2 at index \(0, 0\)$"),
    ({"weights": np.array([1, 0])}, r"^Weights of q must be 2-D, not \(2,\)$"),
    ({"scale": np.ones(2)}, r"^Scale of q must have shape \(\), not \(2,\)$"),
    ({"group_size": 3}, r"^q: in_features 4 is not a multiple of the group size 3$"),
    ({"weights": np.array([[1, 0, 1, 1]]), "mode": "binary"},
     r"^Weights of q must be in \{1, -1\} for binary mode, not 0 at index \(0, 1\)$"),
])
def test_quantlinear_errors(kwargs, msg):
    args = {"name": "q", "weights": np.array([[1, 0, -1, 1]]), "scale": np.float32(1.0),
            **kwargs}
    with pytest.raises(ValueError, match=msg):
        QuantLinear(**args)
