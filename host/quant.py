"""BitNet b1.58 numerics on the host: weight ternarization, activation quantization, BitLinear.

The conventions are the ones pinned in DESIGN.md ("Numerics"):

- Weights (absmean): ``alpha = max(mean|W|, 1e-5)``, ``W_t = clip(rint(W / alpha), -1, 1)``.
- Activations (per token absmax, 8 bit): ``s = 127 / max(max|x|, 1e-5)``,
  ``x_q = clip(rint(x * s), -128, 127)``.
- BitLinear: ``y = (W_t @ x_q) * scale / s``. ``rint`` rounds half to even, as torch does.

The integer product ``W_t @ x_q`` is formed by a *backend* (the fabric, or
:class:`lpu.host.transformer.GoldenBackend`) and is exact; only the final scaling is done here.

Scales (fixed point)
--------------------
Per-tensor and per-group scales are applied in the fixed point defined once in
:mod:`lpu.sim.golden` (:func:`~lpu.sim.golden.group_scales`, re-exported here). A per-tensor
scale is a ``(out, 1)`` scale matrix: one group spanning the row. The backend returns the
scaled integer ``acc[o, v] = sum_g m[o, g] * P[o, g, v]`` (on the LPU the scale unit forms it,
so the host never sees per-group sums) and the host finishes ``y = acc * 2**e[o] / s[v]``.
"""

import numpy as np

from lpu.host.tensors import QuantLinear
from lpu.sim.golden import (
    SCALE_BITS,
    GroupScales,
    apply_group_scales,
    group_scale_error_bound,
    group_scales,
    tensor_scales,
)

__all__ = [
    "EPS", "ACT_BITS", "SCALE_BITS",
    "ternarize", "quantize_activations",
    "GroupScales", "group_scales", "tensor_scales", "linear_scales", "apply_group_scales",
    "group_scale_error_bound",
    "bitlinear", "bitlinear_reference",
]

#: Clamp of the weight absmean and the activation absmax (BitNet b1.58).
EPS = 1e-5
#: Activation width of BitLinear.
ACT_BITS = 8


def ternarize(weights):
    """Absmean ternarization of a float weight matrix (BitNet b1.58).

    Parameters
    ----------
    weights : array_like
        Float weights, any shape.

    Returns
    -------
    w_t : np.ndarray
        int8, same shape, values in {-1, 0, 1}: ``clip(rint(W / alpha), -1, 1)``.
    alpha : np.float32
        ``max(mean|W|, 1e-5)``; the real weight is ``w_t * alpha``.
    """
    w = np.asarray(weights, dtype=np.float32)
    alpha = np.float32(max(float(np.abs(w).mean(dtype=np.float64)) if w.size else 0.0, EPS))
    w_t = np.clip(np.rint(w / alpha), -1, 1).astype(np.int8)
    return w_t, alpha


def quantize_activations(x, *, bits=ACT_BITS):
    """Per-token absmax quantization of activations.

    Tokens are the columns of ``x`` (the fabric's layout: ``in x V``); a 1-D ``x`` is one token.
    The arithmetic is float32, operation for operation as in BitNet's torch code, so the same
    float32 input gives the same integers.

    Parameters
    ----------
    x : array_like
        float, shape ``(in,)`` or ``(in, V)``.
    bits : int
        Activation width; ``s = (2**(bits-1) - 1) / max(max|x|, 1e-5)``.

    Returns
    -------
    x_q : np.ndarray
        int8 (int16 above 8 bits), shape of ``x``, in ``[-2**(bits-1), 2**(bits-1) - 1]``.
    s : np.ndarray
        float32, shape ``()`` or ``(V,)``: the factor ``x`` was multiplied by.

    Raises
    ------
    ValueError
        If ``bits`` is not in 2..16 or ``x`` is not 1-D or 2-D.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"Activation width must be an integer in 2..16, not {bits!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"Activations must be 1-D or 2-D (in x V), not shape {x.shape}")
    top = (1 << (bits - 1)) - 1
    peak = np.maximum(np.abs(x).max(axis=0, initial=0), np.float32(EPS))
    s = (np.float32(top) / peak).astype(np.float32)
    x_q = np.clip(np.rint(x * s), -top - 1, top)
    return x_q.astype(np.int8 if bits <= 8 else np.int16), s


def linear_scales(lin: QuantLinear):
    """The fixed-point scales of ``lin``: ``(out, groups)`` mantissas and ``(out,)`` exponents.

    A per-tensor scale becomes an ``(out, 1)`` matrix (:func:`tensor_scales`), group scales go
    through :func:`group_scales`; backends and :func:`bitlinear` both use this, so they agree.
    """
    if lin.group_size:
        return group_scales(lin.scale)
    return tensor_scales(lin.scale, lin.shape[0])


def _as_columns(lin, x):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (1, 2) or x.shape[0] != lin.shape[1]:
        raise ValueError(f"Input of {lin.name} must have {lin.shape[1]} rows (in x V), "
                         f"not shape {x.shape}")
    return x.reshape(x.shape[0], -1), x.ndim == 1


def bitlinear(lin: QuantLinear, x, backend):
    """BitLinear with the integer product on ``backend``: ``y = (W_t @ x_q) * scale / s``.

    Parameters
    ----------
    lin : QuantLinear
    x : array_like
        float activations, ``(in,)`` or ``(in, V)`` (tokens are columns).
    backend : lpu.host.transformer.ProjectionBackend
        Forms the exact scaled integer ``acc = sum_g m[o, g] * P[o, g, v]``:
        ``backend.scaled_matmul(lin, x_q)`` with the mantissas of :func:`linear_scales`, for
        per-tensor and per-group scales alike; the host finishes ``acc * 2**e[o] / s[v]``.

    Returns
    -------
    np.ndarray
        float32, ``(out,)`` or ``(out, V)``.

    Raises
    ------
    ValueError
        If ``x`` does not have ``in_features`` rows or the backend returns a wrong shape.
    """
    xc, single = _as_columns(lin, x)
    x_q, s = quantize_activations(xc)
    out_f, v = lin.shape[0], xc.shape[1]
    acc = np.asarray(backend.scaled_matmul(lin, x_q))
    if acc.shape != (out_f, v) or acc.dtype.kind not in "iu":
        raise ValueError(f"Backend returned {acc.dtype} {acc.shape} for {lin.name}, "
                         f"not integers of shape {(out_f, v)}")
    gs = linear_scales(lin)
    y = np.ldexp(acc.astype(np.float64), gs.exponent[:, None]) / s.astype(np.float64)
    y = y.astype(np.float32)
    return y[:, 0] if single else y


def bitlinear_reference(lin: QuantLinear, x):
    """Float reference of :func:`bitlinear`: dequantized weights times dequantized activations.

    ``y = lin.dequantize() @ (x_q / s)`` in float32, with the float (not fixed-point) scales.
    It differs from :func:`bitlinear` by float32 rounding and by at most
    :func:`group_scale_error_bound` (per-tensor scales included, as one group per row).

    Parameters
    ----------
    lin : QuantLinear
    x : array_like
        float activations, ``(in,)`` or ``(in, V)``.

    Returns
    -------
    np.ndarray
        float32, ``(out,)`` or ``(out, V)``.
    """
    xc, single = _as_columns(lin, x)
    x_q, s = quantize_activations(xc)
    y = lin.dequantize() @ (x_q.astype(np.float32) / s)
    return y[:, 0] if single else y
