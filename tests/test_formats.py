import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lpu.hw import formats
from lpu.hw.formats import WeightFormat, WeightMode

TERNARY = [WeightFormat.T2, WeightFormat.T5]


def _weights(fmt):
    values = [-1, 1] if fmt is WeightFormat.B1 else [-1, 0, 1]
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40)
    return hnp.arrays(np.int8, shapes, elements=st.sampled_from(values))


@pytest.mark.parametrize("fmt", list(WeightFormat))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(fmt, data):
    w = data.draw(_weights(fmt))
    packed = formats.pack(w, fmt)
    assert packed.dtype == np.uint8
    assert packed.shape == w.shape[:-1] + (fmt.packed_size(w.shape[-1]),)
    assert np.array_equal(formats.unpack(packed, fmt, w.shape[-1]), w)


def test_bits_per_weight():
    assert WeightFormat.T2.bits_per_weight == 2.0
    assert WeightFormat.T5.bits_per_weight == 1.6
    assert WeightFormat.B1.bits_per_weight == 1.0
    # base-3 is within 1% of the information content of a trit
    assert WeightFormat.T5.bits_per_weight / np.log2(3) < 1.01


def test_t2_layout():
    # weight i of a byte at bits 2i+1..2i; +1 -> 0b01, -1 -> 0b10, 0 -> 0b00
    assert formats.pack_t2([1, -1, 0, 1]).tolist() == [0b01_00_10_01]
    assert formats.pack_t2([-1]).tolist() == [0b10]


def test_t5_layout():
    # v = sum((w_i + 1) * 3**(4 - i)), weight 0 most significant; byte = ceil(v * 256 / 243)
    v = 2 * 81 + 0 * 27 + 1 * 9 + 1 * 3 + 1
    assert formats.pack_t5([1, -1, 0, 0, 0]).tolist() == [-(-v * 256 // 243)]
    assert formats.pack_t5([1, 1, 1, 1, 1]).tolist() == [255]
    assert formats.pack_t5([-1, -1, -1, -1, -1]).tolist() == [0]
    # a partial byte is padded with zero weights (trit 1)
    v = 0 * 81 + 27 + 9 + 3 + 1
    assert formats.pack_t5([-1]).tolist() == [-(-v * 256 // 243)]


def test_b1_layout():
    # bit set means -1, weight i at bit i
    assert formats.pack_b1([-1, 1, 1, -1, 1, 1, 1, 1, -1]).tolist() == [0b1001, 0b1]


def test_every_t5_value_round_trips():
    # all 243 trit combinations encode to distinct bytes that decode back
    w = np.array(np.meshgrid(*[[-1, 0, 1]] * 5, indexing="ij")).reshape(5, -1).T
    b = formats.pack_t5(w)
    assert len(set(b[:, 0].tolist())) == 243
    assert np.array_equal(formats.unpack_t5(b, 5), w)


@pytest.mark.parametrize("fmt, bad, msg", [
    ("t2", [0, 2], r"^Weights must be in \{0, 1, -1\} for ternary mode, not 2 at index \(1,\)$"),
    ("t5", [[0], [-2]],
     r"^Weights must be in \{0, 1, -1\} for ternary mode, not -2 at index \(1, 0\)$"),
    ("b1", [1, 0], r"^Weights must be in \{1, -1\} for binary mode, not 0 at index \(1,\)$"),
])
def test_pack_rejects_out_of_range(fmt, bad, msg):
    with pytest.raises(ValueError, match=msg):
        formats.pack(np.array(bad), fmt)


def test_pack_rejects_float():
    with pytest.raises(TypeError, match=r"^Weights must be an integer array, not float64$"):
        formats.pack_t2(np.array([0.0, 1.0]))


def test_unpack_rejects_reserved_t2_code():
    with pytest.raises(ValueError, match=r"^Reserved 2-bit weight code 0b11 at index \(2,\)$"):
        formats.unpack_t2(np.array([0b00_11_00_00], dtype=np.uint8), 4)
    # the datapath's reading of the reserved code: negative flag wins
    assert formats.t2_decode([3], strict=False).tolist() == [-1]


def test_unpack_rejects_invalid_t5_byte():
    # 1 lies between the encodings of v = 0 (byte 0) and v = 1 (byte 2)
    with pytest.raises(ValueError, match=r"^Byte 1 at index \(1,\) is not a base-3 weight "
                                         r"byte$"):
        formats.unpack_t5(np.array([0, 1], dtype=np.uint8), 10)


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match=r"^Packed t2 rows must hold 3 bytes for 9 weights, "
                                         r"not 2$"):
        formats.unpack_t2(np.zeros(2, dtype=np.uint8), 9)
    with pytest.raises(TypeError, match=r"^Packed b1 weights must be a uint8 array, not int64$"):
        formats.unpack_b1(np.zeros(2, dtype=np.int64), 9)
    with pytest.raises(ValueError, match=r"^Weight count must be a non-negative integer, "
                                         r"not -1$"):
        formats.unpack_b1(np.zeros(0, dtype=np.uint8), -1)


def test_unknown_format():
    with pytest.raises(ValueError, match=r"^'t3' is not a valid WeightFormat$"):
        formats.pack([0], "t3")


def test_weight_codes_and_shapes():
    assert formats.weight_codes([1, 0, -1], "ternary").tolist() == [1, 0, 2]
    assert formats.weight_codes([1, -1], "binary").tolist() == [0, 1]
    assert formats.weight_vector_layout("ternary", 5).size == 10
    assert formats.weight_vector_layout(WeightMode.BINARY, 5).size == 5
    assert WeightFormat.T5.mode is WeightMode.TERNARY
    assert WeightFormat.B1.pad_weight == 1
