"""Host-side containers for quantized models: what loaders produce and the driver consumes."""

from dataclasses import dataclass, field

import numpy as np

from lpu.hw.formats import WeightMode, check_weights

__all__ = ["QuantLinear", "QuantModel"]


@dataclass
class QuantLinear:
    """One ternary or binary projection: ``y = (W @ x_q) * scale / s_x`` (DESIGN.md).

    Attributes
    ----------
    name : str
        The tensor's name in its file (for error messages).
    weights : np.ndarray
        int8, (out_features, in_features), values in {-1, 0, 1} (ternary) or {-1, 1} (binary).
    scale : np.ndarray
        float32: shape () for a per-tensor scale (BitNet: alpha, the weights' absmean) or
        (out_features, in_features // group_size) for per-group scales (Bonsai / GGUF blocks).
        The real weight is ``weights * scale`` (the loader converts 1/alpha conventions).
    group_size : int
        0 for a per-tensor scale, else the group length along in_features.
    mode : WeightMode
    """

    name: str
    weights: np.ndarray
    scale: np.ndarray
    group_size: int = 0
    mode: WeightMode = WeightMode.TERNARY

    def __post_init__(self):
        self.mode = WeightMode(self.mode)
        self.weights = check_weights(self.weights, self.mode, what=f"weights of {self.name}")
        if self.weights.ndim != 2:
            raise ValueError(f"Weights of {self.name} must be 2-D, not {self.weights.shape}")
        self.scale = np.asarray(self.scale, dtype=np.float32)
        out_f, in_f = self.weights.shape
        if self.group_size:
            if in_f % self.group_size:
                raise ValueError(f"{self.name}: in_features {in_f} is not a multiple of the "
                                 f"group size {self.group_size}")
            want = (out_f, in_f // self.group_size)
        else:
            want = ()
        if self.scale.shape != want:
            raise ValueError(f"Scale of {self.name} must have shape {want}, not "
                             f"{self.scale.shape}")

    @property
    def shape(self):
        return self.weights.shape

    def dequantize(self):
        """The float weight matrix the quantized one stands for."""
        w = self.weights.astype(np.float32)
        if not self.group_size:
            return w * self.scale
        return (w.reshape(w.shape[0], -1, self.group_size) *
                self.scale[:, :, None]).reshape(w.shape)


@dataclass
class QuantModel:
    """A transformer's configuration, its projections and its float tensors.

    ``config`` uses Hugging Face names where they exist (``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``vocab_size``,
    ``rms_norm_eps``, ``rope_theta``, ``hidden_act``: ``"relu2"`` for BitNet's squared ReLU,
    ``"silu"`` for SwiGLU). ``linears`` maps names such as ``model.layers.0.self_attn.q_proj``
    to :class:`QuantLinear`; ``tensors`` holds float32 arrays (embeddings, norm weights).
    """

    config: dict
    linears: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
