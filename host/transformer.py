"""Decoder-only transformer forward pass on the host, with every projection on a backend.

The host does the float work in NumPy float32 (embedding, RMSNorm, rotary embeddings, attention
with a KV cache, activations, the final norm and the float lm_head); each ternary or binary
projection is a BitLinear (:func:`lpu.host.quant.bitlinear`) whose exact integer product is
formed by a :class:`ProjectionBackend`: :class:`GoldenBackend` (NumPy) or the simulated or real
fabric. Passing ``backend=None`` selects the float reference path
(:func:`lpu.host.quant.bitlinear_reference`: dequantized weights times dequantized activations).

The architecture is Hugging Face's ``BitNetForCausalLM`` (Llama with BitNet's sub-norms), and
the tensor names are its names::

    model.embed_tokens.weight                      (vocab, hidden)
    model.layers.{i}.input_layernorm.weight        (hidden,)
    model.layers.{i}.self_attn.{q,k,v,o}_proj      QuantLinear
    model.layers.{i}.self_attn.attn_sub_norm.weight (heads * head_dim,)   optional
    model.layers.{i}.self_attn.{q,k}_norm.weight   (head_dim,)   optional (Qwen3 / Bonsai)
    model.layers.{i}.post_attention_layernorm.weight (hidden,)
    model.layers.{i}.mlp.{gate,up,down}_proj       QuantLinear
    model.layers.{i}.mlp.ffn_sub_norm.weight       (intermediate,)   optional
    model.norm.weight                              (hidden,)
    lm_head.weight                                 (vocab, hidden)   optional: tied if absent

One layer computes::

    a = attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))     n = input_layernorm(h)
    h = h + o_proj(attn_sub_norm(a))
    n = post_attention_layernorm(h)
    h = h + down_proj(ffn_sub_norm(act(gate_proj(n)) * up_proj(n)))

with ``act`` = ``relu(x)**2`` (``hidden_act`` ``"relu2"``, BitNet) or ``silu`` (``"silu"``).
Rotary embeddings follow the HF Llama convention (``rotate_half``, frequencies
``rope_theta ** (-2i / head_dim)``); attention is grouped-query (head ``h`` reads key/value head
``h // (heads / kv_heads)``), scaled by ``1 / sqrt(head_dim)``, causal.
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from lpu.host.quant import ACT_BITS, bitlinear, bitlinear_reference, linear_scales
from lpu.host.tensors import QuantLinear, QuantModel
from lpu.sim import golden

__all__ = [
    "ProjectionBackend", "GoldenBackend", "TransformerConfig", "KVCache",
    "rms_norm", "rope", "forward", "sample", "generate",
]


@runtime_checkable
class ProjectionBackend(Protocol):
    """What forms the exact integer part of a BitLinear, scales included.

    Activations arrive quantized, one column per token (``V`` columns share one pass over the
    weights). Results must equal :class:`GoldenBackend`'s bit for bit.
    """

    def scaled_matmul(self, lin: QuantLinear, x_q: np.ndarray) -> np.ndarray:
        """``acc[o, v] = sum_g m[o, g] * P[o, g, v]``: int8 ``(in, V)`` -> int64 ``(out, V)``,
        with ``P`` the exact group sums (one group per row for a per-tensor scale) and ``m``
        the mantissas of :func:`lpu.host.quant.linear_scales`; the host applies ``2**e / s``."""
        ...


class GoldenBackend:
    """The NumPy backend: :func:`lpu.sim.golden.scaled_matvec`, the definition of a correct
    result (with :meth:`matmul` and :meth:`group_matmul`, the unscaled sums, for tests).

    Attributes
    ----------
    passes : int
        Weight passes so far (one per call).
    vectors : int
        Activation vectors so far (the sum of ``V`` over calls).
    """

    def __init__(self):
        self.passes = 0
        self.vectors = 0

    def _count(self, x_q):
        self.passes += 1
        self.vectors += x_q.shape[1]

    def scaled_matmul(self, lin: QuantLinear, x_q: np.ndarray) -> np.ndarray:
        """The scaled sums as int64 ``(out, V)`` (:class:`ProjectionBackend`)."""
        self._count(x_q)
        return golden.scaled_matvec(lin.weights, x_q, linear_scales(lin).mantissa,
                                    group=lin.group_size, act_bits=ACT_BITS, mode=lin.mode)

    def matmul(self, lin: QuantLinear, x_q: np.ndarray) -> np.ndarray:
        """``W @ x_q`` as int64 ``(out, V)``."""
        self._count(x_q)
        return golden.matvec(lin.weights, x_q, act_bits=ACT_BITS, mode=lin.mode)

    def group_matmul(self, lin: QuantLinear, x_q: np.ndarray) -> np.ndarray:
        """Group sums as int64 ``(out, groups, V)``.

        Raises
        ------
        ValueError
            If ``lin`` has a per-tensor scale.
        """
        g = lin.group_size
        if not g:
            raise ValueError(f"{lin.name} has a per-tensor scale, not group scales")
        self._count(x_q)
        k = lin.shape[1]
        return np.stack([golden.matvec(lin.weights[:, i:i + g], x_q[i:i + g],
                                       act_bits=ACT_BITS, mode=lin.mode)
                         for i in range(0, k, g)], axis=1)


def _int(config, key, default=None):
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"Model configuration has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Configuration {key!r} must be a positive integer, not {value!r}")
    return value


@dataclass(frozen=True)
class TransformerConfig:
    """The architecture parameters the forward pass needs, validated.

    Built from a model's Hugging Face style ``config`` dict by :meth:`from_dict`.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "relu2"

    @classmethod
    def from_dict(cls, config):
        """Validate a configuration dict.

        Raises
        ------
        ValueError
            If a required key is missing or a value is illegal.
        """
        hidden = _int(config, "hidden_size")
        heads = _int(config, "num_attention_heads")
        kv_heads = _int(config, "num_key_value_heads", heads)
        if heads % kv_heads:
            raise ValueError(f"Attention heads ({heads}) must be a multiple of key/value heads "
                             f"({kv_heads})")
        if "head_dim" not in config and hidden % heads:
            raise ValueError(f"Hidden size {hidden} is not a multiple of the head count {heads}")
        head_dim = _int(config, "head_dim", hidden // heads)
        if head_dim % 2:
            raise ValueError(f"Head dimension must be even for rotary embeddings, not {head_dim}")
        act = config.get("hidden_act", "relu2")
        if act not in ("relu2", "silu"):
            raise ValueError(f"Activation must be 'relu2' or 'silu', not {act!r}")
        scaling = config.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) != "default":
            raise ValueError(f"RoPE scaling {scaling!r} is not supported")
        return cls(hidden_size=hidden,
                   intermediate_size=_int(config, "intermediate_size"),
                   num_hidden_layers=_int(config, "num_hidden_layers"),
                   num_attention_heads=heads,
                   num_key_value_heads=kv_heads,
                   head_dim=head_dim,
                   vocab_size=_int(config, "vocab_size"),
                   max_position_embeddings=_int(config, "max_position_embeddings", 2048),
                   rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                   rope_theta=float(config.get("rope_theta", 10000.0)),
                   hidden_act=act)


class KVCache:
    """Keys and values of the tokens seen so far, per layer: ``(kv_heads, T, head_dim)``.

    Parameters
    ----------
    num_layers : int
    """

    def __init__(self, num_layers):
        self.keys = [None] * num_layers
        self.values = [None] * num_layers

    def __len__(self):
        """Tokens cached (positions 0 .. len - 1)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def append(self, layer, k, v):
        """Add ``k``, ``v`` ``(kv_heads, T, head_dim)`` of ``layer``; return all keys and values."""
        if self.keys[layer] is not None:
            k = np.concatenate([self.keys[layer], k], axis=1)
            v = np.concatenate([self.values[layer], v], axis=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def rms_norm(x, weight, eps):
    """RMSNorm over the last axis (float32, as HF: ``x * rsqrt(mean(x**2) + eps) * weight``)."""
    x = np.asarray(x, dtype=np.float32)
    r = (np.float32(1) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)))
    return (x * r) * np.asarray(weight, dtype=np.float32)


def rope(x, positions, theta):
    """Rotary position embedding, HF Llama convention (``rotate_half``).

    Parameters
    ----------
    x : np.ndarray
        ``(..., T, head_dim)``.
    positions : np.ndarray
        ``(T,)`` integer positions.
    theta : float
        ``rope_theta``.
    """
    d = x.shape[-1]
    inv_freq = (1.0 / theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    freqs = np.asarray(positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(np.float32)


def _project(lin, x, backend):
    """A BitLinear on token rows: ``x`` ``(T, in)`` -> ``(T, out)``."""
    xt = np.ascontiguousarray(x.T)
    y = bitlinear_reference(lin, xt) if backend is None else bitlinear(lin, xt, backend)
    return np.ascontiguousarray(y.T)


class _Weights:
    """Looks tensors up by name and checks their shapes."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg

    def tensor(self, name, shape, *, optional=False):
        t = self.model.tensors.get(name)
        if t is None:
            if optional:
                return None
            raise ValueError(f"Model has no tensor {name}")
        t = np.asarray(t, dtype=np.float32)
        if t.shape != shape:
            raise ValueError(f"Tensor {name} must have shape {shape}, not {t.shape}")
        return t

    def linear(self, name, shape):
        lin = self.model.linears.get(name)
        if lin is None:
            raise ValueError(f"Model has no projection {name}")
        if lin.shape != shape:
            raise ValueError(f"Projection {name} must have shape {shape}, not {lin.shape}")
        return lin


def _layer(w, i, h, positions, cache, backend):
    cfg = w.cfg
    eps, hd = cfg.rms_norm_eps, cfg.head_dim
    nh, nkv, d, f = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size,
                     cfg.intermediate_size)
    p = f"model.layers.{i}."
    t = h.shape[0]

    n = rms_norm(h, w.tensor(p + "input_layernorm.weight", (d,)), eps)
    q = _project(w.linear(p + "self_attn.q_proj", (nh * hd, d)), n, backend)
    k = _project(w.linear(p + "self_attn.k_proj", (nkv * hd, d)), n, backend)
    v = _project(w.linear(p + "self_attn.v_proj", (nkv * hd, d)), n, backend)
    q = q.reshape(t, nh, hd).transpose(1, 0, 2)
    k = k.reshape(t, nkv, hd).transpose(1, 0, 2)
    v = v.reshape(t, nkv, hd).transpose(1, 0, 2)
    q_norm = w.tensor(p + "self_attn.q_norm.weight", (hd,), optional=True)
    k_norm = w.tensor(p + "self_attn.k_norm.weight", (hd,), optional=True)
    if q_norm is not None:
        q = rms_norm(q, q_norm, eps)
    if k_norm is not None:
        k = rms_norm(k, k_norm, eps)
    q = rope(q, positions, cfg.rope_theta)
    k = rope(k, positions, cfg.rope_theta)
    k, v = cache.append(i, k, v)

    # Grouped-query attention: the query heads sharing a key/value head sit on one axis.
    rep = nh // nkv
    qg = q.reshape(nkv, rep, t, hd)
    scores = np.einsum("grtd,gsd->grts", qg, k) * np.float32(1 / np.sqrt(hd))
    causal = positions[:, None] >= np.arange(k.shape[1])[None, :]
    scores = np.where(causal, scores, np.float32(-np.inf))
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32)
    a = np.einsum("grts,gsd->grtd", probs, v).reshape(nh, t, hd).transpose(1, 0, 2)
    a = a.reshape(t, nh * hd)
    sub = w.tensor(p + "self_attn.attn_sub_norm.weight", (nh * hd,), optional=True)
    if sub is not None:
        a = rms_norm(a, sub, eps)
    h = h + _project(w.linear(p + "self_attn.o_proj", (d, nh * hd)), a, backend)

    n = rms_norm(h, w.tensor(p + "post_attention_layernorm.weight", (d,)), eps)
    gate = _project(w.linear(p + "mlp.gate_proj", (f, d)), n, backend)
    up = _project(w.linear(p + "mlp.up_proj", (f, d)), n, backend)
    if cfg.hidden_act == "relu2":
        act = np.square(np.maximum(gate, np.float32(0)))
    else:
        act = gate / (np.float32(1) + np.exp(-gate))
    m = act * up
    sub = w.tensor(p + "mlp.ffn_sub_norm.weight", (f,), optional=True)
    if sub is not None:
        m = rms_norm(m, sub, eps)
    return h + _project(w.linear(p + "mlp.down_proj", (d, f)), m, backend)


def forward(model: QuantModel, ids, backend, *, cache=None):
    """Logits of every token of ``ids``.

    Parameters
    ----------
    model : QuantModel
    ids : array_like
        Token ids, ``(T,)``; with a ``cache`` they continue the cached sequence.
    backend : ProjectionBackend or None
        Forms every projection's integer product (all ``T`` tokens in one weight pass); None
        selects the float reference path.
    cache : KVCache, optional
        Keys and values of the preceding tokens; updated in place. Without it ``ids`` is a
        whole sequence starting at position 0.

    Returns
    -------
    np.ndarray
        float32 logits ``(T, vocab_size)``.

    Raises
    ------
    ValueError
        If the configuration, a tensor or a projection is missing or malformed, a token id is
        out of range, or the sequence is longer than ``max_position_embeddings``.
    """
    cfg = TransformerConfig.from_dict(model.config)
    w = _Weights(model, cfg)
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"Token ids must be a non-empty 1-D integer array, not {ids!r}")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"Token ids must be in [0, {cfg.vocab_size}), not {ids.tolist()}")
    cache = KVCache(cfg.num_hidden_layers) if cache is None else cache
    start = len(cache)
    if start + ids.size > cfg.max_position_embeddings:
        raise ValueError(f"Sequence of {start + ids.size} tokens is longer than "
                         f"max_position_embeddings ({cfg.max_position_embeddings})")
    positions = np.arange(start, start + ids.size)
    embed = w.tensor("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size))
    h = embed[ids]
    for i in range(cfg.num_hidden_layers):
        h = _layer(w, i, h, positions, cache, backend)
    h = rms_norm(h, w.tensor("model.norm.weight", (cfg.hidden_size,)), cfg.rms_norm_eps)
    head = w.tensor("lm_head.weight", embed.shape, optional=True)
    return h @ (embed if head is None else head).T


def sample(logits, *, temperature=0.0, top_k=0, rng=None):
    """Pick a token from one row of logits.

    Parameters
    ----------
    logits : array_like
        ``(vocab,)``.
    temperature : float
        0 picks the most likely token (the lowest id among ties); above 0 samples from
        ``softmax(logits / temperature)``.
    top_k : int
        Above 0, sample among the ``top_k`` most likely tokens only.
    rng : np.random.Generator, optional
        Source of randomness for sampling.

    Raises
    ------
    ValueError
        If ``temperature`` is negative or ``top_k`` is negative.
    """
    if not temperature >= 0:
        raise ValueError(f"Temperature must be at least 0, not {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer, not {top_k!r}")
    z = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(z))
    z = z / temperature
    if 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    rng = np.random.default_rng() if rng is None else rng
    return int(rng.choice(z.size, p=p / p.sum()))


def generate(model: QuantModel, prompt_ids, max_tokens, backend, *, temperature=0.0, top_k=0,
             seed=None, stop_ids=()):
    """Continue ``prompt_ids`` with up to ``max_tokens`` tokens, using a KV cache.

    The prompt is prefilled in one forward pass (every projection sees all prompt tokens as
    columns of one activation matrix, so each weight is fetched once); then each new token is
    one forward pass of one column.

    Parameters
    ----------
    model : QuantModel
    prompt_ids : array_like
        Non-empty 1-D token ids.
    max_tokens : int
        Most tokens to generate; generation also ends at a stop token (which is returned) and
        when the context reaches ``max_position_embeddings``.
    backend : ProjectionBackend or None
        As for :func:`forward`.
    temperature, top_k :
        As for :func:`sample`; temperature 0 (the default) is greedy decoding.
    seed : int, optional
        Seed of the sampling generator (``numpy.random.default_rng``).
    stop_ids : iterable of int
        Tokens that end generation.

    Returns
    -------
    list of int
        The generated tokens (without the prompt).

    Raises
    ------
    ValueError
        If ``max_tokens`` is negative, or as for :func:`forward` and :func:`sample`.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be a non-negative integer, not {max_tokens!r}")
    cfg = TransformerConfig.from_dict(model.config)
    rng = np.random.default_rng(seed)
    stop = set(int(s) for s in stop_ids)
    cache = KVCache(cfg.num_hidden_layers)
    out = []
    ids = np.asarray(prompt_ids)
    while len(out) < max_tokens:
        logits = forward(model, ids, backend, cache=cache)
        token = sample(logits[-1], temperature=temperature, top_k=top_k, rng=rng)
        out.append(token)
        if token in stop or len(cache) >= cfg.max_position_embeddings:
            break
        ids = np.array([token])
    return out
