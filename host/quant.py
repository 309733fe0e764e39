"""BitNet b1.58 numerics on the host: weight ternarization, activation quantization, BitLinear.

The conventions are the ones pinned in DESIGN.md ("Numerics"):

- Weights (absmean): ``alpha = max(mean|W|, 1e-5)``, ``W_t = clip(rint(W / alpha), -1, 1)``.
- Activations (per token absmax, 8 bit): ``s = 127 / max(max|x|, 1e-5)``,
  ``x_q = clip(rint(x * s), -128, 127)``.
- BitLinear: ``y = (W_t @ x_q) * scale / s``. ``rint`` rounds half to even, as torch does.

The integer product ``W_t @ x_q`` is formed by a *backend* (the fabric, or
:class:`lpu.host.transformer.GoldenBackend`) and is exact; only the final scaling is done here.

Group scales (fixed point)
--------------------------
For per-group scales (Bonsai's groups of 128, GGUF blocks of 256) the backend returns one exact
integer sum ``P[o, g, v]`` per output row ``o``, group ``g`` and activation vector ``v``. The
group scales ``S[o, g]`` are applied in fixed point, defined once by :func:`group_scales`:

- every row ``o`` has one exponent ``e[o]`` and each group a signed mantissa ``m[o, g]`` of
  :data:`SCALE_BITS` (16) bits, ``|m| <= 2**15 - 1``, with ``S ~= m * 2**e[o]``;
- ``e[o]`` is the smallest exponent for which the row's largest ``|S|`` still fits, and
  ``m = rint(S / 2**e)``;
- the fabric forms ``acc[o, v] = sum_g m[o, g] * P[o, g, v]`` exactly (an integer
  multiply-accumulate: ``|acc| <= (2**15 - 1) * 128 * in_features``), and
  ``y = acc * 2**e[o] / s[v]`` is the only inexact step, as for a per-tensor scale.

Error bound. Rounding the mantissa costs at most half a step, ``|S - m 2**e| <= 2**(e-1)``, and
the smallest exponent gives ``2**(e-1) <= peak[o] * 2**-15 / (1 - 2**-16)`` with
``peak[o] = max_g |S[o, g]|``. Hence, against the float result with exact scales,

    ``|y_fixed[o, v] - y_float[o, v]| <= 2**(e[o]-1) * sum_g |P[o, g, v]| / s[v]``
    ``                               <= 3.06e-5 * peak[o] * sum_g |P[o, g, v]| / s[v]``

(:func:`group_scale_error_bound`), i.e. a relative error of at most 2**-15 of the row's largest
scale per unit of ``sum |P| / s``, which is at most ``||x||_1 + in_features / (2 s)``. For fp16
scales (GGUF, Bonsai) the bound is rarely reached: an fp16 scale of at least 1/16 of its row's
peak (11 significant bits) is represented exactly.
"""

from dataclasses import dataclass

import numpy as np

from lpu.host.tensors import QuantLinear

__all__ = [
    "EPS", "ACT_BITS", "SCALE_BITS",
    "ternarize", "quantize_activations",
    "GroupScales", "group_scales", "apply_group_scales", "group_scale_error_bound",
    "bitlinear", "bitlinear_reference",
]

#: Clamp of the weight absmean and the activation absmax (BitNet b1.58).
EPS = 1e-5
#: Activation width of BitLinear.
ACT_BITS = 8
#: Width of a signed group-scale mantissa.
SCALE_BITS = 16


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


@dataclass(frozen=True)
class GroupScales:
    """Fixed-point group scales: ``S[o, g] ~= mantissa[o, g] * 2**exponent[o]``.

    Attributes
    ----------
    mantissa : np.ndarray
        int32, ``(out, groups)``, ``|mantissa| <= 2**(bits-1) - 1``.
    exponent : np.ndarray
        int32, ``(out,)``: one exponent per output row.
    bits : int
        Mantissa width (signed).
    """

    mantissa: np.ndarray
    exponent: np.ndarray
    bits: int = SCALE_BITS

    def value(self):
        """The scales the fixed-point numbers stand for, float64 ``(out, groups)``."""
        return np.ldexp(self.mantissa.astype(np.float64), self.exponent[:, None])


def group_scales(scale, *, bits=SCALE_BITS):
    """Convert float group scales to the fabric's fixed point (see the module docstring).

    Parameters
    ----------
    scale : array_like
        float, ``(out, groups)``.
    bits : int
        Signed mantissa width, 2..32.

    Returns
    -------
    GroupScales

    Raises
    ------
    ValueError
        If ``scale`` is not 2-D or not finite, or ``bits`` is out of range.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ValueError(f"Scale mantissa width must be an integer in 2..32, not {bits!r}")
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"Group scales must be 2-D (out x groups), not shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("Group scales must be finite")
    top = (1 << (bits - 1)) - 1
    peak = np.abs(s).max(axis=1) if s.shape[1] else np.zeros(s.shape[0])
    # peak = f * 2**p with f in [0.5, 1): with e = p - (bits - 1) the peak's mantissa lies in
    # [2**(bits-2), 2**(bits-1)), the largest range that fits; one exponent less would not. Only
    # when it rounds up to 2**(bits-1) does it need one exponent more. frexp and ldexp are exact.
    _, p = np.frexp(peak)
    e = np.where(peak > 0, p - (bits - 1), 0)
    e = e + (np.rint(np.ldexp(peak, -e)) > top)
    m = np.rint(np.ldexp(s, -e[:, None]))
    return GroupScales(m.astype(np.int32), e.astype(np.int32), bits)


def apply_group_scales(sums, gs):
    """The fabric's fixed-point scale step: ``acc[o, v] = sum_g m[o, g] * P[o, g, v]``, exact.

    Parameters
    ----------
    sums : np.ndarray
        Integer group sums ``P``, ``(out, groups, V)``.
    gs : GroupScales

    Returns
    -------
    np.ndarray
        int64 ``(out, V)``; the output is ``acc * 2**gs.exponent[:, None] / s``.
    """
    p = np.asarray(sums, dtype=np.int64)
    return np.einsum("og,ogv->ov", gs.mantissa.astype(np.int64), p)


def group_scale_error_bound(sums, s, gs):
    """Bound on ``|y_fixed - y_float|`` of a group-scaled BitLinear (module docstring).

    Parameters
    ----------
    sums : np.ndarray
        Integer group sums ``(out, groups, V)``.
    s : array_like
        Activation factors ``(V,)``.
    gs : GroupScales

    Returns
    -------
    np.ndarray
        float64 ``(out, V)``: ``2**(e[o]-1) * sum_g |P[o, g, v]| / s[v]``.
    """
    total = np.abs(np.asarray(sums, dtype=np.int64)).sum(axis=1).astype(np.float64)
    return np.ldexp(total, gs.exponent[:, None] - 1) / np.asarray(s, dtype=np.float64)


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
        Forms the exact integer sums: ``backend.matmul(lin, x_q)`` for a per-tensor scale,
        ``backend.group_matmul(lin, x_q)`` for group scales (applied with :func:`group_scales`).

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
    s64 = s.astype(np.float64)
    if not lin.group_size:
        acc = np.asarray(backend.matmul(lin, x_q))
        if acc.shape != (out_f, v) or acc.dtype.kind not in "iu":
            raise ValueError(f"Backend returned {acc.dtype} {acc.shape} for {lin.name}, "
                             f"not integers of shape {(out_f, v)}")
        y = acc.astype(np.float64) * float(lin.scale) / s64
    else:
        groups = lin.shape[1] // lin.group_size
        sums = np.asarray(backend.group_matmul(lin, x_q))
        if sums.shape != (out_f, groups, v) or sums.dtype.kind not in "iu":
            raise ValueError(f"Backend returned {sums.dtype} {sums.shape} for {lin.name}, "
                             f"not integers of shape {(out_f, groups, v)}")
        gs = group_scales(lin.scale)
        acc = apply_group_scales(sums, gs)
        y = np.ldexp(acc.astype(np.float64), gs.exponent[:, None]) / s64
    y = y.astype(np.float32)
    return y[:, 0] if single else y


def bitlinear_reference(lin: QuantLinear, x):
    """Float reference of :func:`bitlinear`: dequantized weights times dequantized activations.

    ``y = lin.dequantize() @ (x_q / s)`` in float32, with the float (not fixed-point) group
    scales. It differs from :func:`bitlinear` by float32 rounding and, for group scales, by at
    most :func:`group_scale_error_bound`.

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
