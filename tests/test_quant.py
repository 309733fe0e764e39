import numpy as np
import pytest
from conftest import env_int

from lpu.host.quant import (
    EPS,
    GroupScales,
    apply_group_scales,
    bitlinear,
    bitlinear_reference,
    group_scale_error_bound,
    group_scales,
    linear_scales,
    quantize_activations,
    ternarize,
)
from lpu.host.tensors import QuantLinear
from lpu.host.transformer import GoldenBackend
from lpu.sim import golden

SAMPLES = env_int("LPU_SAMPLES", 20)


def test_ternarize_absmean_and_half_to_even():
    # mean |W| = 1, so W / alpha = W: 0.5 -> 0 and 1.5 -> 2 -> 1 (half to even), -0.5 -> -0.
    w = np.array([[0.5, -0.5, 1.5, -1.5], [1.0, -1.0, 0.0, 2.0]], dtype=np.float32)
    w_t, alpha = ternarize(w)
    assert alpha == np.float32(1.0)
    assert w_t.dtype == np.int8
    assert w_t.tolist() == [[0, 0, 1, -1], [1, -1, 0, 1]]
    w_t, alpha = ternarize(np.zeros((2, 2)))
    assert alpha == np.float32(EPS) and not w_t.any()


def test_ternarize_random(rng):
    w = rng.normal(size=(64, 48)).astype(np.float32) * 0.1
    w_t, alpha = ternarize(w)
    assert np.isclose(alpha, np.abs(w).mean(), rtol=1e-6)
    assert np.array_equal(w_t, np.clip(np.rint(w / alpha), -1, 1))


def test_quantize_activations_per_token():
    x = np.array([[1.0, 0.0, -2.0], [-0.5, 0.0, 1.0], [0.25, 0.0, 0.0]], dtype=np.float32)
    x_q, s = quantize_activations(x)
    assert x_q.dtype == np.int8
    assert np.array_equal(s, np.float32(127) / np.float32([1.0, EPS, 2.0]))
    # Column 0: 0.25 * 127 = 31.75 -> 32; -0.5 * 127 = -63.5 -> -64 (half to even).
    assert x_q.T.tolist() == [[127, -64, 32], [0, 0, 0], [-127, 64, 0]]
    x_q, s = quantize_activations(x[:, 2])
    assert x_q.tolist() == [-127, 64, 0] and s.shape == ()


def test_quantize_activations_bits(rng):
    x = rng.normal(size=(32, 5)).astype(np.float32)
    x_q, s = quantize_activations(x, bits=4)
    assert np.abs(x_q).max(axis=0).tolist() == [7] * 5
    assert np.array_equal(x_q, np.clip(np.rint(x * s), -8, 7))


@pytest.mark.parametrize("kwargs, msg", [
    ({"bits": 1}, r"^Activation width must be an integer in 2\.\.16, not 1$"),
    ({"x": np.zeros((2, 2, 2))}, r"^Activations must be 1-D or 2-D \(in x V\), not shape "
     r"\(2, 2, 2\)$"),
])
def test_quantize_activations_errors(kwargs, msg):
    args = {"x": np.zeros(4), **kwargs}
    with pytest.raises(ValueError, match=msg):
        quantize_activations(**args)


def test_group_scales_exponent_is_smallest(rng):
    for _ in range(SAMPLES):
        scale = rng.normal(size=(8, 4)) * 10.0 ** rng.uniform(-8, 3, size=(8, 1))
        gs = group_scales(scale)
        top = 2 ** 15 - 1
        assert np.abs(gs.mantissa).max() <= top
        peak = np.abs(scale).max(axis=1)
        assert (np.rint(peak / 2.0 ** gs.exponent) <= top).all()
        assert (np.rint(peak / 2.0 ** (gs.exponent - 1)) > top).all()   # one less overflows
        step = 2.0 ** (gs.exponent - 1)
        assert (np.abs(gs.value() - scale) <= step[:, None]).all()
        assert (step <= peak * 2.0 ** -15 / (1 - 2.0 ** -16)).all()


def test_group_scales_edge_cases():
    # A peak that rounds up to 2**15 needs one exponent more; zero rows get exponent 0.
    gs = group_scales(np.array([[2.0 ** 15 - 0.25, 1.0], [0.0, 0.0], [-3.0, 0.5]]))
    assert gs.exponent.tolist() == [1, 0, -13]
    assert gs.mantissa.tolist() == [[16384, 0], [0, 0], [-24576, 4096]]
    # fp16 scales of at least 1/16 of their row's peak are exact.
    h = np.float16([[0.0123, 0.001, -0.0077, 0.00099]]).astype(np.float64)
    assert np.array_equal(group_scales(h).value(), h)


def test_group_scales_fp16_exact(rng):
    for _ in range(SAMPLES):
        peak = 2.0 ** rng.uniform(-20, 10, size=(16, 1))
        h = (peak * rng.uniform(1 / 16, 1, size=(16, 8)) * rng.choice([-1, 1], size=(16, 8)))
        h[:, 0] = peak[:, 0]
        h = h.astype(np.float16).astype(np.float64)
        assert np.array_equal(group_scales(h).value(), h)


@pytest.mark.parametrize("scale, bits, msg", [
    (np.ones(3), 16, r"^Group scales must be 2-D \(out x groups\), not shape \(3,\)$"),
    (np.array([[np.inf]]), 16, r"^Group scales must be finite$"),
    (np.ones((1, 1)), 1, r"^Scale mantissa width must be an integer in 2\.\.32, not 1$"),
])
def test_group_scales_errors(scale, bits, msg):
    with pytest.raises(ValueError, match=msg):
        group_scales(scale, bits=bits)


def test_group_scale_error_bound_random(rng):
    """The fixed-point result is within the stated bound of the exact float result."""
    worst = 0.0
    for _ in range(SAMPLES):
        out, groups, g, v = 16, 4, 32, 3
        w = rng.integers(-1, 2, size=(out, groups * g))
        scale = (rng.uniform(0.5, 2, size=(out, groups)) *
                 10.0 ** rng.uniform(-4, 1, size=(out, 1))).astype(np.float16)
        lin = QuantLinear("w", w, scale.astype(np.float32) * rng.uniform(0.9, 1.1),
                          group_size=g)
        x = rng.normal(size=(groups * g, v)).astype(np.float32)
        y = bitlinear(lin, x, GoldenBackend())
        x_q, s = quantize_activations(x)
        sums = np.einsum("ogk,gkv->ogv", w.reshape(out, groups, g).astype(np.int64),
                         x_q.astype(np.int64).reshape(groups, g, v))
        exact = np.einsum("og,ogv->ov", lin.scale.astype(np.float64), sums) / s
        gs = group_scales(lin.scale)
        bound = group_scale_error_bound(sums, s, gs)
        # float32 rounding of the output comes on top of the fixed-point error.
        err = np.abs(y - exact) - np.abs(exact) * 2.0 ** -24
        assert (err <= bound).all()
        # The data-independent form of the bound.
        peak = np.abs(lin.scale).max(axis=1, keepdims=True).astype(np.float64)
        assert (bound <= 3.06e-5 * peak * np.abs(sums).sum(axis=1) / s).all()
        worst = max(worst, float((err / np.maximum(bound, 1e-300)).max()))
    assert worst < 1


def test_fixed_point_is_defined_once():
    """host.quant re-exports the golden model's fixed point."""
    assert group_scales is golden.group_scales and GroupScales is golden.GroupScales
    assert apply_group_scales is golden.apply_group_scales
    assert group_scale_error_bound is golden.group_scale_error_bound


def test_apply_group_scales_is_integer():
    gs = GroupScales(np.array([[3, -2]], dtype=np.int32), np.array([-4], dtype=np.int32))
    sums = np.array([[[5, 1 << 40], [7, 1]]])
    acc = apply_group_scales(sums, gs)
    assert acc.dtype == np.int64
    assert acc.tolist() == [[15 - 14, 3 * (1 << 40) - 2]]


def test_bitlinear_per_tensor(rng):
    """A per-tensor scale is one group per row in the same fixed point."""
    w = rng.integers(-1, 2, size=(24, 40))
    lin = QuantLinear("w", w, np.float32(0.03))
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = bitlinear(lin, x, GoldenBackend())
    x_q, s = quantize_activations(x)
    acc = w.astype(np.int64) @ x_q.astype(np.int64)
    gs = linear_scales(lin)
    assert gs.mantissa.shape == (24, 1) and (gs.mantissa == gs.mantissa[0, 0]).all()
    assert 1 << 14 <= gs.mantissa[0, 0] < 1 << 15
    assert gs.exponent.tolist() == [-20] * 24                  # 0.03 = 31457.28 * 2**-20
    assert y.dtype == np.float32 and y.shape == (24, 5)
    want = np.ldexp(acc * np.int64(gs.mantissa[0, 0]), -20) / s.astype(np.float64)
    assert np.array_equal(y, want.astype(np.float32))
    exact = acc * np.float64(np.float32(0.03)) / s
    bound = group_scale_error_bound(acc[:, None, :], s, gs)
    assert (np.abs(y - exact) - np.abs(exact) * 2.0 ** -24 <= bound).all()
    ref = bitlinear_reference(lin, x)
    assert np.allclose(y, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert np.array_equal(bitlinear(lin, x[:, 2], GoldenBackend()), y[:, 2])


@pytest.mark.parametrize("group", [0, 16])
def test_scale_error_bound_is_tight(rng, group):
    """Scales half a mantissa step off and sums of one sign come within 2x of the bound."""
    out, k = 4, 64
    groups = k // group if group else 1
    # 2**14 + 0.499 mantissa steps: float32 holds it, the fixed point rounds off 0.499 steps.
    scale = np.full((out, groups), (2 ** 14 + 0.499) * 2.0 ** -20, dtype=np.float32)
    lin = QuantLinear("t", np.ones((out, k), dtype=np.int8),
                      scale if group else scale[0, 0], group_size=group)
    x = np.abs(rng.normal(size=(k, 3))).astype(np.float32) + 0.5
    y = bitlinear(lin, x, GoldenBackend())
    x_q, s = quantize_activations(x)
    sums = GoldenBackend().group_matmul(lin, x_q) if group else \
        GoldenBackend().matmul(lin, x_q)[:, None, :]
    exact = np.einsum("og,ogv->ov", scale.astype(np.float64), sums) / s
    bound = group_scale_error_bound(sums, s, linear_scales(lin))
    err = np.abs(y - exact)
    assert (err - np.abs(exact) * 2.0 ** -24 <= bound).all()
    assert (err >= bound / 2).all()


def test_bitlinear_binary_groups(rng):
    w = rng.choice([-1, 1], size=(8, 256))
    lin = QuantLinear("b", w, rng.uniform(0.01, 0.02, size=(8, 2)), group_size=128,
                      mode="binary")
    x = rng.normal(size=256).astype(np.float32)
    y = bitlinear(lin, x, GoldenBackend())
    ref = bitlinear_reference(lin, x)
    assert y.shape == (8,)
    assert np.allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


class _WrongBackend:
    def scaled_matmul(self, lin, x_q):
        if lin.group_size:
            return np.zeros((lin.shape[0], x_q.shape[1]))
        return np.zeros((lin.shape[0] + 1, x_q.shape[1]), dtype=np.int64)


def test_bitlinear_errors():
    lin = QuantLinear("q", np.ones((2, 4), dtype=np.int8), np.float32(1))
    with pytest.raises(ValueError, match=r"^Input of q must have 4 rows \(in x V\), not shape "
                                         r"\(3,\)$"):
        bitlinear(lin, np.zeros(3), GoldenBackend())
    with pytest.raises(ValueError, match=r"^Backend returned int64 \(3, 1\) for q, not integers "
                                         r"of shape \(2, 1\)$"):
        bitlinear(lin, np.zeros(4), _WrongBackend())
    lin = QuantLinear("g", np.ones((2, 4), dtype=np.int8), np.ones((2, 2)), group_size=2)
    with pytest.raises(ValueError, match=r"^Backend returned float64 \(2, 1\) for g, not "
                                         r"integers of shape \(2, 1\)$"):
        bitlinear(lin, np.zeros(4), _WrongBackend())
