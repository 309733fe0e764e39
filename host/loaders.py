"""Model loaders and writers: Hugging Face BitNet safetensors and GGUF (TQ1_0, TQ2_0, Q1_0).

Every loader returns a :class:`~lpu.host.tensors.QuantModel`: the ternary or binary integer
matrix of each projection with its scales (:class:`~lpu.host.tensors.QuantLinear`, where the real
weight is always ``weights * scale``), float32 copies of every other tensor, and the model's
configuration under Hugging Face names. Weight values are recovered exactly from the packed bits,
never by rounding dequantized floats.

Formats
-------
Hugging Face BitNet b1.58 (``microsoft/bitnet-b1.58-2B-4T``), :func:`load_hf_bitnet`
    A directory with ``config.json`` and ``model.safetensors`` (or shards listed in
    ``model.safetensors.index.json``). Each BitLinear projection is ``<name>.weight``, uint8, shape
    ``(out / 4, in)``: the code ``w + 1`` in {0, 1, 2} of weight row ``k * (out / 4) + j`` sits in
    byte row ``j`` at bits ``2k + 1 .. 2k`` (four rows interleaved along the *output* dimension;
    code 3 is invalid). ``<name>.weight_scale`` is a one-element float tensor; in the 2B4T
    checkpoint's offline path (transformers ``AutoBitLinear``) the layer computes
    ``F.linear(x, w) * weight_scale``, so the real weight is ``w * weight_scale`` (convention
    ``"multiply"``, the default). The older transformers ``BitLinear`` path divides by it
    (convention ``"divide"``). Other tensors are float (F32, F16 or BF16) and come back as float32.
GGUF, :func:`load_gguf`
    Read with the ``gguf`` package. Projections are stored in blocks along the input dimension,
    one fp16 scale ``d`` per block, real weight ``d * w``:

    - TQ2_0, 256 weights in 66 bytes: 64 bytes of 2-bit codes ``w + 1`` (weight
      ``128h + 32k + i`` at bits ``2k + 1 .. 2k`` of byte ``32h + i``; code 3 is invalid), then
      ``d``.
    - TQ1_0, 256 weights in 54 bytes: 48 bytes of five trits ``w + 1`` each, then 4 bytes of four
      trits, then ``d``. A byte holds ``v = sum(t_k * 3**(4 - k))`` scaled to
      ``ceil(v * 256 / 243)``, the base-3 packing of :mod:`lpu.hw.formats` (``t5``). Trit ``k``
      of byte ``i`` is weight ``32k + i`` (bytes 0..31), ``160 + 16k + i`` (bytes 32..47) or
      ``240 + 4k + i`` (bytes 48..51).
    - Q1_0 (ggml type 41, "Q1_0_g128", 1-bit Bonsai), 128 weights in 18 bytes: ``d`` *first*, then
      16 bytes of sign bits, weight ``j`` at bit ``j % 8`` (LSB first) of byte ``j // 8``; bit 1
      means +1, bit 0 means -1, so ``w = d * (2b - 1)``. This is the polarity opposite to the
      device's ``b1`` packing (bit set means -1); the codecs here invert the bytes and reuse it.

    llama.cpp tensor names are mapped to Hugging Face names (``blk.N.attn_q.weight`` ->
    ``model.layers.N.self_attn.q_proj``, ``token_embd.weight`` -> ``model.embed_tokens.weight``,
    ...); names not in the table are kept as they are. For the ``llama`` architecture llama.cpp's
    converter permutes the rows of ``attn_q``/``attn_k`` for its interleaved RoPE; the loader
    undoes that (and :func:`save_gguf` applies it), so Q and K rows are always in Hugging Face
    order (``rotate_half`` RoPE).

Errors
------
Truncated, malformed or inconsistent files raise :class:`ModelFormatError` (a ValueError) whose
message names the file, field or tensor. Writers check the whole model and encode it before the
first byte is written, and write each file to a temporary name that replaces the target only when
complete.
"""

import contextlib
import json
import math
import os
import re
import secrets
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as GGMLType

from lpu.host.tensors import QuantLinear, QuantModel
from lpu.hw.formats import WeightMode, check_weights, pack_b1, pack_t5, unpack_b1, unpack_t5

__all__ = [
    "ModelFormatError",
    "load_hf_bitnet", "save_hf_bitnet", "pack_hf_ternary", "unpack_hf_ternary",
    "load_gguf", "save_gguf", "encode_gguf_blocks", "decode_gguf_blocks", "GGUF_WEIGHT_TYPES",
    "projection_shapes",
]


class ModelFormatError(ValueError):
    """A model file is truncated, malformed or inconsistent with its configuration."""


# -- shared: configuration and expected shapes -------------------------------------------------

_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_HF_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "vocab_size")
_CONVENTIONS = ("multiply", "divide")


def _positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _normalize_config(config, what):
    """Check the structural fields of a HF-style config; fill num_key_value_heads, head_dim."""
    config = dict(config)
    for key in _HF_REQUIRED:
        if key not in config:
            raise ModelFormatError(f"{what} has no field '{key}'")
    for key in _HF_REQUIRED + ("num_key_value_heads", "head_dim"):
        if key in config and not _positive_int(config[key]):
            raise ModelFormatError(
                f"{what} field '{key}' must be a positive integer, not {config[key]!r}")
    heads = config["num_attention_heads"]
    config.setdefault("num_key_value_heads", heads)
    if heads % config["num_key_value_heads"]:
        raise ModelFormatError(
            f"{what}: num_attention_heads {heads} is not a multiple of num_key_value_heads "
            f"{config['num_key_value_heads']}")
    if "head_dim" not in config:
        if config["hidden_size"] % heads:
            raise ModelFormatError(
                f"{what}: hidden_size {config['hidden_size']} is not a multiple of "
                f"num_attention_heads {heads} and there is no head_dim")
        config["head_dim"] = config["hidden_size"] // heads
    return config


def _projection_shapes(config):
    """(out_features, in_features) of each projection of a layer, from the config."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    return {"self_attn.q_proj": (q_dim, hidden), "self_attn.k_proj": (kv_dim, hidden),
            "self_attn.v_proj": (kv_dim, hidden), "self_attn.o_proj": (hidden, q_dim),
            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter)}


def projection_shapes(config):
    """(out_features, in_features) of each ternary projection of one layer of a model with the
    Hugging Face BitNet ``config`` (a dict; ``num_key_value_heads`` and ``head_dim`` default as
    the loaders fill them in).

    Raises
    ------
    ModelFormatError
        A structural field is missing or invalid.
    """
    return _projection_shapes(_normalize_config(config, "Model config"))


def _float_shape(name, config):
    """The shape a known float tensor must have, or None for names without a rule."""
    hidden = config["hidden_size"]
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (config["vocab_size"], hidden)
    if name == "model.norm.weight":
        return (hidden,)
    m = re.fullmatch(r"model\.layers\.\d+\.(.+)\.weight", name)
    if m is None:
        return None
    return {"input_layernorm": (hidden,), "post_attention_layernorm": (hidden,),
            "self_attn.attn_sub_norm": (config["num_attention_heads"] * config["head_dim"],),
            "mlp.ffn_sub_norm": (config["intermediate_size"],),
            "self_attn.q_norm": (config["head_dim"],),
            "self_attn.k_norm": (config["head_dim"],)}.get(m.group(1))


def _layer_index(key):
    m = re.match(r"model\.layers\.(\d+)\.", key)
    return int(m.group(1)) if m else None


# -- shared: files --------------------------------------------------------------------------

@contextlib.contextmanager
def _replacing(path):
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_atomic(path, chunks):
    with _replacing(path) as tmp, open(tmp, "xb") as f:
        for chunk in chunks:
            f.write(chunk)


# -- safetensors (own reader and writer: numpy has no bfloat16, and errors name the tensor) ------

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
              "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2",
              "U8": "u1", "BOOL": "?"}
_ST_FLOAT = ("F64", "F32", "F16", "BF16")
_ST_FROM_NAME = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def _f32_to_bf16(values):
    """Round float32 to bfloat16 bits, to nearest even (NaN stays a quiet NaN)."""
    n = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((n + 0x7FFF + ((n >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((n >> 16) | 0x40).astype(np.uint16), rounded)


class _STensor:
    """One tensor of a safetensors file: raw little-endian data (BF16 as uint16 bits)."""

    def __init__(self, file, name, dtype, data):
        self.file, self.name, self.dtype, self.data = file, name, dtype, data

    def to_float32(self):
        if self.dtype not in _ST_FLOAT:
            raise ModelFormatError(
                f"Tensor {self.name} has dtype {self.dtype}, not a float type (F32, F16, BF16)")
        if self.dtype == "BF16":
            return _bf16_to_f32(self.data)
        return self.data.astype(np.float32)


def _read_safetensors(file):
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{file.name} is truncated: {size} bytes, no header length")
        hlen = int.from_bytes(head, "little")
        if 8 + hlen > size:
            raise ModelFormatError(
                f"{file.name} is truncated: its header needs {hlen} bytes after the first 8, "
                f"the file has {size - 8}")
        raw = f.read(hlen)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{file.name} has a header that is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{file.name} has a header that is not a JSON object")
    data = np.memmap(file, dtype=np.uint8, mode="r") if size > 8 + hlen else np.zeros(0, np.uint8)
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not (all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end))
                    and isinstance(dtype, str)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(
                f"{file.name}: entry of tensor {name} is malformed: {info!r}") from None
        if dtype not in _ST_DTYPES:
            raise ModelFormatError(f"{file.name}: tensor {name} has unsupported dtype {dtype}")
        npdt = np.dtype(_ST_DTYPES[dtype])
        need = math.prod(shape) * npdt.itemsize
        if end - begin != need:
            raise ModelFormatError(
                f"{file.name}: tensor {name} spans {end - begin} bytes, its dtype {dtype} and "
                f"shape {tuple(shape)} need {need}")
        if base + end > size:
            raise ModelFormatError(
                f"{file.name} is truncated: tensor {name} needs bytes {base + begin} to "
                f"{base + end}, the file has {size}")
        arr = data[base + begin:base + end].view(npdt).reshape(shape)
        out[name] = _STensor(file.name, name, dtype, arr)
    return out


def _safetensors_chunks(tensors, metadata):
    """Chunks of a safetensors file; ``tensors`` maps names to (dtype name, array)."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, (dtype, arr) in tensors.items():
        blob = np.ascontiguousarray(arr, dtype=np.dtype(_ST_DTYPES[dtype])).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)   # the data section starts 8-byte aligned, as safetensors does
    return [len(text).to_bytes(8, "little"), text, *blobs]


# -- HF BitNet packing ----------------------------------------------------------------------

_SHIFTS4 = (2 * np.arange(4, dtype=np.uint8))


def pack_hf_ternary(weights):
    """Pack ternary weights in the Hugging Face BitNet layout.

    Parameters
    ----------
    weights : array_like
        Integers in {-1, 0, 1}, shape (out_features, in_features), out_features divisible by 4.

    Returns
    -------
    np.ndarray
        uint8, shape (out_features / 4, in_features): weight row ``k * (out / 4) + j`` stored as
        the code ``w + 1`` at bits ``2k + 1 .. 2k`` of byte row ``j``.

    Raises
    ------
    TypeError
        If the weights are not integers.
    ValueError
        If a weight is not ternary, the array is not 2-D, or out_features is not divisible by 4.
    """
    w = check_weights(weights, WeightMode.TERNARY)
    if w.ndim != 2:
        raise ValueError(f"Weights must be 2-D, not shape {w.shape}")
    out_f, in_f = w.shape
    if out_f % 4:
        raise ValueError(f"HF BitNet packing needs out_features divisible by 4, not {out_f}")
    codes = (w + 1).astype(np.uint8).reshape(4, out_f // 4, in_f)
    return (codes << _SHIFTS4[:, None, None]).sum(axis=0, dtype=np.uint8)


def unpack_hf_ternary(packed, *, name="Packed array"):
    """Unpack Hugging Face BitNet packed weights (the inverse of :func:`pack_hf_ternary`).

    Parameters
    ----------
    packed : np.ndarray
        uint8, shape (out_features / 4, in_features).
    name : str
        What the array is called in error messages.

    Returns
    -------
    np.ndarray
        int8, shape (out_features, in_features), values in {-1, 0, 1}.

    Raises
    ------
    ModelFormatError
        If ``packed`` is not a 2-D uint8 array or holds the invalid code 3.
    """
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ModelFormatError(
            f"{name} must be a 2-D uint8 array, not {arr.dtype} of shape {arr.shape}")
    rows = arr.shape[0]
    codes = (arr[None, :, :] >> _SHIFTS4[:, None, None]) & 3
    codes = codes.reshape(4 * rows, arr.shape[1])
    if (codes == 3).any():
        r, c = (int(i) for i in np.argwhere(codes == 3)[0])
        raise ModelFormatError(
            f"{name} holds the invalid 2-bit code 3 for weight ({r}, {c}) "
            f"(packed byte ({r % rows}, {c}) bits {2 * (r // rows) + 1}..{2 * (r // rows)})")
    return (codes.astype(np.int8) - 1).astype(np.int8)


# -- HF BitNet loader and writer --------------------------------------------------------------

def _check_convention(scale_convention):
    if scale_convention not in _CONVENTIONS:
        raise ValueError(f"Scale convention must be 'multiply' or 'divide', "
                         f"not {scale_convention!r}")


def _read_hf_tensors(path):
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise ModelFormatError(
                "model.safetensors.index.json is not JSON with a 'weight_map' object") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise ModelFormatError(
                    f"Shard {shard} listed in model.safetensors.index.json does not exist")
            tensors.update(_read_safetensors(path / shard))
        for name, shard in weight_map.items():
            if name not in tensors or tensors[name].file != shard:
                raise ModelFormatError(
                    f"Tensor {name} is listed in model.safetensors.index.json for {shard}, "
                    f"which does not hold it")
        return tensors
    if single.is_file():
        return _read_safetensors(single)
    raise ModelFormatError(
        f"{path} holds neither model.safetensors nor model.safetensors.index.json")


def _scalar_scale(t, convention):
    if t.dtype not in _ST_FLOAT or t.data.size != 1:
        raise ModelFormatError(
            f"Tensor {t.name} must be a one-element float tensor, not {t.dtype} of shape "
            f"{t.data.shape}")
    value = float(t.to_float32().reshape(()))
    if not (math.isfinite(value) and value > 0):
        raise ModelFormatError(f"Tensor {t.name} must be a positive finite number, not {value}")
    return value if convention == "multiply" else 1.0 / value


def load_hf_bitnet(path, *, scale_convention="multiply"):
    """Load a Hugging Face BitNet b1.58 checkpoint (the 2B4T layout).

    Parameters
    ----------
    path : str or os.PathLike
        Directory with ``config.json`` and ``model.safetensors`` or sharded ``*.safetensors``
        listed in ``model.safetensors.index.json``.
    scale_convention : {"multiply", "divide"}
        How ``weight_scale`` relates to the real weight: ``"multiply"`` (2B4T offline
        ``AutoBitLinear``): ``W = w * weight_scale``; ``"divide"`` (older transformers
        ``BitLinear``, config ``quantization_config.linear_class`` ``"bitlinear"``):
        ``W = w / weight_scale``. The returned scale is always the multiplier.

    Returns
    -------
    QuantModel
        ``config`` is config.json with ``num_key_value_heads``, ``head_dim`` and ``hidden_act``
        (``"relu2"``) filled in when absent; ``linears`` holds every tensor that has a
        ``weight_scale`` under its module name (``model.layers.0.self_attn.q_proj``) as a
        ternary :class:`QuantLinear` with a per-tensor scale; ``tensors`` holds the others
        (embeddings, norms, ``lm_head.weight`` if present) as float32.

    Raises
    ------
    ModelFormatError
        If a file is missing, truncated or malformed, a config field is missing or invalid, a
        projection or its ``weight_scale`` is missing, a packed weight has the wrong dtype, a
        shape that does not match the config, or the invalid code 3.
    ValueError
        If ``scale_convention`` is not one of the two names.
    """
    _check_convention(scale_convention)
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelFormatError(f"{path} has no config.json")
    try:
        raw_config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"config.json is not valid JSON ({exc})") from None
    if not isinstance(raw_config, dict):
        raise ModelFormatError("config.json is not a JSON object")
    config = _normalize_config(raw_config, "config.json")
    config.setdefault("hidden_act", "relu2")
    tensors = _read_hf_tensors(path)

    shapes = _projection_shapes(config)
    quantized = {n[:-len("_scale")] for n in tensors if n.endswith(".weight_scale")}
    for layer in range(config["num_hidden_layers"]):
        for proj in _PROJECTIONS:
            name = f"model.layers.{layer}.{proj}.weight"
            if name not in tensors:
                raise ModelFormatError(f"Tensor {name} is missing from the checkpoint")
            if name not in quantized:
                raise ModelFormatError(
                    f"Tensor {name}_scale is missing (every packed BitLinear weight has one)")

    model = QuantModel(config=config)
    for name, t in tensors.items():
        if name.endswith(".weight_scale"):
            if name[:-len("_scale")] not in tensors:
                raise ModelFormatError(f"Tensor {name} has no weight {name[:-len('_scale')]}")
            continue
        if name not in quantized:
            arr = t.to_float32()
            want = _float_shape(name, config)
            if want is not None and arr.shape != want:
                raise ModelFormatError(
                    f"Tensor {name} has shape {arr.shape}; config.json needs {want}")
            model.tensors[name] = arr
            continue
        if t.dtype != "U8" or t.data.ndim != 2:
            raise ModelFormatError(
                f"Tensor {name} has dtype {t.dtype} and shape {t.data.shape}; packed BitLinear "
                f"weights are 2-D U8")
        key = name[:-len(".weight")]
        unpacked_shape = (4 * t.data.shape[0], t.data.shape[1])
        layer = _layer_index(key)
        want = shapes.get(key.split(".", 3)[-1]) if layer is not None else None
        if want is not None and unpacked_shape != want:
            raise ModelFormatError(
                f"Tensor {name} has packed shape {t.data.shape}, {unpacked_shape} unpacked; "
                f"config.json needs {want}")
        weights = unpack_hf_ternary(t.data, name=f"Tensor {name}")
        scale = _scalar_scale(tensors[name + "_scale"], scale_convention)
        model.linears[key] = QuantLinear(name=name, weights=weights,
                                         scale=np.float32(scale), group_size=0,
                                         mode=WeightMode.TERNARY)
    return model


def save_hf_bitnet(model, path, *, scale_convention="multiply", dtype="float32",
                   max_shard_bytes=None):
    """Write a :class:`QuantModel` in the Hugging Face BitNet b1.58 (2B4T) layout.

    Parameters
    ----------
    model : QuantModel
        HF-style config, ternary linears with per-tensor scales (``group_size == 0``) and float
        tensors. Every layer must have the seven projections with the shapes its config implies.
    path : str or os.PathLike
        Output directory (created if missing). Writes ``config.json`` (the model's config with
        ``architectures``, ``model_type`` ``"bitnet"`` and a ``quantization_config`` whose
        ``linear_class`` matches ``scale_convention``) and ``model.safetensors``,
        or ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``. The
        other entry point (index or single file) is removed if it exists, so the directory always
        loads as what was written last.
    scale_convention : {"multiply", "divide"}
        ``weight_scale`` is written as ``scale`` or as ``1 / scale`` (see :func:`load_hf_bitnet`).
    dtype : {"float32", "bfloat16", "float16"}
        Storage type of the float tensors and of ``weight_scale`` (the 2B4T checkpoint uses
        bfloat16; the default float32 makes a round trip lossless).
    max_shard_bytes : int, optional
        Start a new shard when the next tensor would take one past this many data bytes.

    Raises
    ------
    ValueError
        If the config lacks a required field, a projection is missing, binary, group-scaled, has
        a non-positive scale or a shape the config does not imply, or an argument is invalid.
    """
    _check_convention(scale_convention)
    if dtype not in _ST_FROM_NAME:
        raise ValueError(f"Dtype must be 'float32', 'bfloat16' or 'float16', not {dtype!r}")
    if max_shard_bytes is not None and not _positive_int(max_shard_bytes):
        raise ValueError(f"Shard size must be a positive integer, not {max_shard_bytes!r}")
    st_dtype = _ST_FROM_NAME[dtype]
    config = _normalize_config(model.config, "Model config")
    shapes = _projection_shapes(config)
    for layer in range(config["num_hidden_layers"]):
        for proj in _PROJECTIONS:
            key = f"model.layers.{layer}.{proj}"
            if key not in model.linears:
                raise ValueError(f"Model has no linear {key}")
            if model.linears[key].shape != shapes[proj]:
                raise ValueError(f"Linear {key} has shape {model.linears[key].shape}; the config "
                                 f"needs {shapes[proj]}")

    def floats(arr):
        arr = np.asarray(arr, dtype=np.float32)
        return (st_dtype, _f32_to_bf16(arr) if st_dtype == "BF16" else arr)

    out = {}
    for key, lin in model.linears.items():
        if lin.mode is not WeightMode.TERNARY or lin.group_size:
            raise ValueError(f"HF BitNet stores ternary weights with one scale per tensor; linear "
                             f"{key} is {lin.mode.value} with group_size {lin.group_size}")
        scale = float(lin.scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"Scale of linear {key} must be a positive finite number, "
                             f"not {scale}")
        out[f"{key}.weight"] = ("U8", pack_hf_ternary(lin.weights))
        stored = scale if scale_convention == "multiply" else 1.0 / scale
        out[f"{key}.weight_scale"] = floats(np.array([stored]))
    for name, arr in model.tensors.items():
        if name in out:
            raise ValueError(f"Tensor {name} clashes with a linear's weight")
        out[name] = floats(arr)

    # Group into shards (a single one without max_shard_bytes) and encode before writing.
    shards, size = [[]], 0
    for name, (_, arr) in out.items():
        nbytes = arr.nbytes
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    metadata = {"format": "pt"}   # transformers refuses safetensors files without it
    # The class that reads weight_scale the way it is written: AutoBitLinear multiplies by it,
    # BitLinear divides by it.
    linear_class = "autobitlinear" if scale_convention == "multiply" else "bitlinear"
    hf_config = dict(model.config, architectures=["BitNetForCausalLM"], model_type="bitnet",
                     quantization_config={"quant_method": "bitnet", "linear_class": linear_class,
                                          "quantization_mode": "offline"})
    hf_config = json.dumps(hf_config, indent=2, default=_json_default).encode() + b"\n"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if max_shard_bytes is None:
        files = {"model.safetensors": _safetensors_chunks(out, metadata)}
        stale = path / "model.safetensors.index.json"
    else:
        n = len(shards)
        names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        pairs = list(zip(names, shards, strict=True))
        files = {fn: _safetensors_chunks({k: out[k] for k in shard}, metadata)
                 for fn, shard in pairs}
        index = {"metadata": {"total_size": sum(a.nbytes for _, a in out.values())},
                 "weight_map": {k: fn for fn, shard in pairs for k in shard}}
        files["model.safetensors.index.json"] = [json.dumps(index, indent=2).encode() + b"\n"]
        stale = path / "model.safetensors"
    files["config.json"] = [hf_config]
    for fn, chunks in files.items():
        _write_atomic(path / fn, chunks)
    with contextlib.suppress(FileNotFoundError):
        stale.unlink()


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"Config value {value!r} is not JSON serializable")


# -- GGUF block codecs ---------------------------------------------------------------------

#: The GGUF tensor types that hold projections, with their QuantLinear mode.
GGUF_WEIGHT_TYPES = {GGMLType.TQ1_0: WeightMode.TERNARY, GGMLType.TQ2_0: WeightMode.TERNARY,
                     GGMLType.Q1_0: WeightMode.BINARY}
_TQ1_PARTS = ((0, 32, 5), (32, 48, 5), (48, 52, 4))   # byte range and trits per byte
# The 243 bytes that are base-3 encodings (the others are no TQ1_0 byte).
_T5_VALID = np.zeros(256, dtype=bool)
_T5_VALID[pack_t5(np.stack(np.meshgrid(*[[-1, 0, 1]] * 5, indexing="ij"), -1).reshape(-1, 5))] \
    = True


def _block_geometry(qtype):
    qtype = GGMLType(qtype)
    if qtype not in GGUF_WEIGHT_TYPES:
        raise ValueError(f"GGUF weight type must be TQ1_0, TQ2_0 or Q1_0, not {qtype.name}")
    return (qtype, *gguf.GGML_QUANT_SIZES[qtype])


def encode_gguf_blocks(weights, scales, qtype):
    """Encode integer weights and per-block scales as GGUF TQ1_0, TQ2_0 or Q1_0 blocks.

    Parameters
    ----------
    weights : array_like
        int, shape (rows, in_features): ternary for TQ1_0/TQ2_0, binary (+-1) for Q1_0.
    scales : array_like
        float, shape (rows, in_features / block): one scale per block (256 for TQ, 128 for
        Q1_0), stored as fp16.
    qtype : GGMLQuantizationType or int or str
        The block type.

    Returns
    -------
    np.ndarray
        uint8, shape (rows, in_features / block * block_bytes), as ``gguf.GGUFWriter.add_tensor``
        takes it with ``raw_dtype=qtype``.

    Raises
    ------
    TypeError
        If the weights are not integers.
    ValueError
        If a weight is illegal for the type, the shapes disagree, in_features is not a multiple
        of the block size or a scale does not fit fp16.
    """
    qtype = GGMLType[qtype] if isinstance(qtype, str) else qtype
    qtype, block, _ = _block_geometry(qtype)
    w = check_weights(weights, GGUF_WEIGHT_TYPES[qtype])
    if w.ndim != 2:
        raise ValueError(f"Weights must be 2-D, not shape {w.shape}")
    rows, in_f = w.shape
    if in_f % block:
        raise ValueError(f"Rows of {in_f} weights are not a multiple of the {qtype.name} block "
                         f"size {block}")
    nb = in_f // block
    s = np.asarray(scales, dtype=np.float32)
    if s.shape != (rows, nb):
        raise ValueError(f"Scales must have shape {(rows, nb)}, not {s.shape}")
    with np.errstate(over="ignore"):
        d = s.astype(np.float16)
    if not np.isfinite(d).all():
        raise ValueError(f"Scales must be finite in fp16, not {s[~np.isfinite(d)][0]}")
    d = d.reshape(-1, 1).view(np.uint8)
    w = w.reshape(rows * nb, block)
    n = w.shape[0]
    if qtype is GGMLType.Q1_0:
        # Q1_0 bit 1 means +1; b1 (device) bit 1 means -1: same bit order, inverted bytes.
        blocks = np.concatenate([d, pack_b1(w) ^ 0xFF], axis=1)
    elif qtype is GGMLType.TQ2_0:
        codes = (w + 1).astype(np.uint8).reshape(n, 2, 4, 32)
        qs = (codes << _SHIFTS4[None, None, :, None]).sum(axis=2, dtype=np.uint8)
        blocks = np.concatenate([qs.reshape(n, 64), d], axis=1)
    else:
        parts, first = [], 0
        for lo, hi, per in _TQ1_PARTS:
            m = hi - lo
            t = w[:, first:first + per * m].reshape(n, per, m).transpose(0, 2, 1)
            if per == 4:   # the fifth trit of the last four bytes is 0 (weight -1 in t5 terms)
                t = np.concatenate([t, np.full((n, m, 1), -1, np.int8)], axis=2)
            parts.append(pack_t5(t).reshape(n, m))
            first += per * m
        blocks = np.concatenate([*parts, d], axis=1)
    return blocks.reshape(rows, -1)


def decode_gguf_blocks(data, qtype, *, name="tensor"):
    """Decode GGUF TQ1_0, TQ2_0 or Q1_0 blocks into integer weights and per-block scales.

    Parameters
    ----------
    data : np.ndarray
        uint8, shape (rows, blocks_per_row * block_bytes), as ``gguf.GGUFReader`` gives it.
    qtype : GGMLQuantizationType or int or str
        The block type.
    name : str
        The tensor's name for error messages.

    Returns
    -------
    weights : np.ndarray
        int8, shape (rows, blocks_per_row * block), recovered exactly from the bits.
    scales : np.ndarray
        float32, shape (rows, blocks_per_row): the blocks' fp16 scales.

    Raises
    ------
    ModelFormatError
        If the bytes are not whole blocks, a TQ2_0 code is 3 or a TQ1_0 byte is no base-3
        encoding.
    """
    qtype = GGMLType[qtype] if isinstance(qtype, str) else qtype
    qtype, block, nbytes = _block_geometry(qtype)
    arr = np.asarray(data)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] % nbytes:
        raise ModelFormatError(
            f"GGUF tensor '{name}' must be 2-D uint8 rows of whole {qtype.name} blocks of "
            f"{nbytes} bytes, not {arr.dtype} of shape {arr.shape}")
    rows, nb = arr.shape[0], arr.shape[1] // nbytes
    b = np.ascontiguousarray(arr).reshape(rows * nb, nbytes)
    n = b.shape[0]

    def where(flat_block, elem):
        r, blk = divmod(int(flat_block), nb)
        return f"({r}, {blk * block + int(elem)})"

    if qtype is GGMLType.Q1_0:
        d = b[:, :2]
        w = unpack_b1(b[:, 2:] ^ 0xFF, block)
    elif qtype is GGMLType.TQ2_0:
        codes = (b[:, :64].reshape(n, 2, 1, 32) >> _SHIFTS4[None, None, :, None]) & 3
        codes = codes.reshape(n, block)
        if (codes == 3).any():
            i, e = np.argwhere(codes == 3)[0]
            raise ModelFormatError(
                f"GGUF tensor '{name}' holds the invalid TQ2_0 code 3 for weight {where(i, e)}")
        w = codes.astype(np.int8) - 1
        d = b[:, 64:66]
    else:
        bad = ~_T5_VALID[b[:, :52]]
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ModelFormatError(
                f"GGUF tensor '{name}' holds the byte {int(b[i, j])}, no TQ1_0 base-3 "
                f"encoding, in block {int(i) % nb} of row {int(i) // nb}")
        parts = []
        for lo, hi, per in _TQ1_PARTS:
            m = hi - lo
            t = unpack_t5(np.ascontiguousarray(b[:, lo:hi]), 5 * m).reshape(n, m, 5)
            parts.append(t[:, :, :per].transpose(0, 2, 1).reshape(n, per * m))
        w = np.concatenate(parts, axis=1)
        d = b[:, 52:54]
    scales = np.ascontiguousarray(d).view("<f2").astype(np.float32).reshape(rows, nb)
    return w.reshape(rows, nb * block).astype(np.int8), scales


# -- GGUF loader and writer ----------------------------------------------------------------

#: architecture -> (hidden_act, whether llama.cpp's converter permutes attn_q/attn_k rows)
_GGUF_ARCHS = {"llama": ("silu", True), "bitnet": ("silu", False),
               "bitnet-b1.58": ("relu2", False), "bitnet-25": ("relu2", False),
               "qwen2": ("silu", False), "qwen3": ("silu", False)}
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "attn_sub_norm": "self_attn.attn_sub_norm",
    "ffn_sub_norm": "mlp.ffn_sub_norm", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm"}
_GGUF_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                      "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_HF_LAYER_NAMES = {v: k for k, v in _GGUF_LAYER_NAMES.items()}
_HF_GLOBAL_NAMES = {v: k for k, v in _GGUF_GLOBAL_NAMES.items()}


def _hf_name(gguf_name):
    """HF name of a GGUF tensor (unknown names unchanged) and whether it is a projection."""
    if gguf_name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[gguf_name], False
    m = re.fullmatch(r"blk\.(\d+)\.([a-z_]+)\.weight", gguf_name)
    if m and m.group(2) in _GGUF_LAYER_NAMES:
        hf = f"model.layers.{m.group(1)}.{_GGUF_LAYER_NAMES[m.group(2)]}"
        return (hf, True) if hf.rsplit(".", 1)[-1].endswith("proj") else (hf + ".weight", False)
    return gguf_name, False


def _gguf_name(hf_name):
    """GGUF name of a HF tensor or linear (unknown names unchanged)."""
    if hf_name in _HF_GLOBAL_NAMES:
        return _HF_GLOBAL_NAMES[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+?)(\.weight)?", hf_name)
    if m and m.group(2) in _HF_LAYER_NAMES:
        return f"blk.{m.group(1)}.{_HF_LAYER_NAMES[m.group(2)]}.weight"
    return hf_name


def _rope_permute(rows, heads, inverse):
    """llama.cpp's q/k row permutation (convert_hf_to_gguf LlamaModel.permute) or its inverse.

    HF row ``h*D + a*D/2 + b`` (rotate_half halves) is GGUF row ``h*D + 2b + a`` (interleaved
    pairs); applied to the weights and the per-row block scales alike.
    """
    shape = rows.shape
    half = shape[0] // heads // 2
    split = (heads, half, 2) if inverse else (heads, 2, half)
    return rows.reshape(*split, *shape[1:]).swapaxes(1, 2).reshape(shape)


class _CheckedGGUFReader(gguf.GGUFReader):
    """GGUFReader that checks array lengths, and each tensor's type, row length and extent.

    ``gguf.GGUFReader`` fails on bad tensors with bare numpy errors; checking them here lets the
    message name the tensor. Past the end of the file its numpy views are empty, so an array of
    one-byte items whose length is corrupt would make it loop for as long as the length says.
    """

    def _get_field_parts(self, orig_offs, raw_type):
        if int(raw_type) == gguf.GGUFValueType.ARRAY:
            length = self._get(orig_offs + 4, np.uint64)
            left = len(self.data) - (orig_offs + 12)
            if len(length) and int(length[0]) > left:   # every item takes at least one byte
                raise ModelFormatError(
                    f"GGUF metadata array at byte {orig_offs} claims {int(length[0])} items, "
                    f"more than the {max(left, 0)} bytes left in the file")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_tensors(self, start_offs, fields):
        size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_type, offset = field.parts
            name = bytes(name_data).decode("utf-8", "replace")
            try:
                qtype = GGMLType(int(raw_type[0]))
            except ValueError:
                raise ModelFormatError(
                    f"GGUF tensor '{name}' has the unknown type {int(raw_type[0])}") from None
            block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
            dims = [int(v) for v in dims]
            if dims and dims[0] % block:
                raise ModelFormatError(
                    f"GGUF tensor '{name}' has rows of {dims[0]} weights, not a multiple of the "
                    f"{qtype.name} block size {block}")
            begin = int(start_offs) + int(offset[0])
            end = begin + math.prod(dims) // block * nbytes
            if end > size:
                raise ModelFormatError(
                    f"GGUF tensor '{name}' is truncated: it needs bytes {begin} to {end}, the "
                    f"file has {size}")
        super()._build_tensors(start_offs, fields)


def _open_gguf(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"GGUF":
        raise ModelFormatError(f"{path.name} is not a GGUF file: it starts with {head!r}")
    try:
        reader = _CheckedGGUFReader(path)
    except ModelFormatError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        # gguf reads the header with numpy views; a cut header shows up as an empty view.
        raise ModelFormatError(f"GGUF file {path.name} is truncated or malformed in its header "
                               f"({type(exc).__name__}: {exc})") from None
    if reader.byte_order != "I":
        raise ModelFormatError(f"GGUF file {path.name} is big-endian, which is not supported")
    return reader


def _gguf_value(reader, key, *, required=True, kind="int"):
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ModelFormatError(f"GGUF metadata has no key '{key}'")
        return None
    try:
        value = field.contents()
    except UnicodeDecodeError:   # gguf decodes string values only when asked
        raise ModelFormatError(f"GGUF metadata '{key}' is not valid UTF-8") from None
    if kind == "int" and not _positive_int(value):
        raise ModelFormatError(f"GGUF metadata '{key}' must be a positive integer, not {value!r}")
    if kind == "float" and (isinstance(value, (bool, str, list)) or value is None):
        raise ModelFormatError(f"GGUF metadata '{key}' must be a number, not {value!r}")
    if kind == "str" and not isinstance(value, str):
        raise ModelFormatError(f"GGUF metadata '{key}' must be a string, not {value!r}")
    return int(value) if kind == "int" else float(value) if kind == "float" else value


def _gguf_config(reader, tensors):
    arch = _gguf_value(reader, "general.architecture", kind="str")
    if arch not in _GGUF_ARCHS:
        raise ModelFormatError(f"GGUF architecture '{arch}' is not supported "
                               f"(known: {', '.join(sorted(_GGUF_ARCHS))})")
    config = {"model_type": arch, "hidden_act": _GGUF_ARCHS[arch][0]}
    for hf, key in (("hidden_size", "embedding_length"), ("num_hidden_layers", "block_count"),
                    ("intermediate_size", "feed_forward_length"),
                    ("num_attention_heads", "attention.head_count")):
        config[hf] = _gguf_value(reader, f"{arch}.{key}")
    for hf, key, kind in (("num_key_value_heads", "attention.head_count_kv", "int"),
                          ("head_dim", "attention.key_length", "int"),
                          ("vocab_size", "vocab_size", "int"),
                          ("max_position_embeddings", "context_length", "int"),
                          ("rope_theta", "rope.freq_base", "float"),
                          ("rms_norm_eps", "attention.layer_norm_rms_epsilon", "float")):
        value = _gguf_value(reader, f"{arch}.{key}", required=False, kind=kind)
        if value is not None:
            config[hf] = value
    if "vocab_size" not in config:
        if "token_embd.weight" not in tensors:
            raise ModelFormatError(
                f"GGUF file has no vocabulary size: neither '{arch}.vocab_size' nor "
                f"token_embd.weight")
        config["vocab_size"] = int(tensors["token_embd.weight"].shape[1])
    config["tie_word_embeddings"] = "output.weight" not in tensors
    return _normalize_config(config, "GGUF metadata")


def _gguf_float(t):
    if t.tensor_type in GGUF_WEIGHT_TYPES:
        w, s = decode_gguf_blocks(t.data, t.tensor_type, name=t.name)
        block = gguf.GGML_QUANT_SIZES[t.tensor_type][0]
        return QuantLinear(t.name, w, s, block, GGUF_WEIGHT_TYPES[t.tensor_type]).dequantize()
    try:
        return np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except NotImplementedError:
        raise ModelFormatError(f"GGUF tensor '{t.name}' has type {t.tensor_type.name}, which "
                               f"is not a float or dequantizable type") from None


def load_gguf(path):
    """Load a GGUF model whose projections are TQ1_0, TQ2_0 or Q1_0.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.gguf`` file.

    Returns
    -------
    QuantModel
        ``config`` under Hugging Face names from the ``<arch>.*`` metadata
        (``embedding_length`` -> ``hidden_size``, ``block_count``, ``attention.head_count``,
        ``attention.head_count_kv``, ``feed_forward_length``, ``context_length`` ->
        ``max_position_embeddings``, ``rope.freq_base`` -> ``rope_theta``,
        ``attention.layer_norm_rms_epsilon`` -> ``rms_norm_eps``, ``attention.key_length`` ->
        ``head_dim``, ``vocab_size``), ``model_type`` = the architecture, ``hidden_act`` by
        architecture (``relu2`` for ``bitnet-b1.58``/``bitnet-25``, else ``silu``) and
        ``tie_word_embeddings`` when there is no ``output.weight``. ``linears``: each projection
        (and ``lm_head`` if ``output.weight`` is TQ/Q1_0) as a :class:`QuantLinear` with
        ``group_size`` 256 (TQ1_0, TQ2_0, ternary) or 128 (Q1_0, binary) and its fp16 block
        scales. ``tensors``: every other tensor dequantized to float32.

    Raises
    ------
    ModelFormatError
        If the file is not GGUF, is truncated or malformed, lacks a required metadata key, has
        an unsupported architecture, a projection of another type or of a shape the metadata
        does not imply, a row not a multiple of its block size, or invalid packed weights.
    """
    path = Path(path)
    reader = _open_gguf(path)
    by_name = {t.name: t for t in reader.tensors}
    config = _gguf_config(reader, by_name)
    permute = _GGUF_ARCHS[config["model_type"]][1]
    shapes = _projection_shapes(config)
    for layer in range(config["num_hidden_layers"]):
        for proj in _PROJECTIONS:
            name = _gguf_name(f"model.layers.{layer}.{proj}")
            if name not in by_name:
                raise ModelFormatError(f"GGUF tensor '{name}' is missing")
    model = QuantModel(config=config)
    for name, t in by_name.items():
        hf, is_proj = _hf_name(name)
        ggml_shape = tuple(reversed([int(v) for v in t.shape]))   # (rows, row length)
        if not is_proj and not (name == "output.weight" and t.tensor_type in GGUF_WEIGHT_TYPES):
            arr = _gguf_float(t).reshape(ggml_shape)
            want = _float_shape(hf, config)
            if want is not None and arr.shape != want:
                raise ModelFormatError(
                    f"GGUF tensor '{name}' has shape {arr.shape}; the metadata needs {want}")
            model.tensors[hf] = arr
            continue
        key = "lm_head" if name == "output.weight" else hf
        if t.tensor_type not in GGUF_WEIGHT_TYPES:
            raise ModelFormatError(f"GGUF tensor '{name}' has type {t.tensor_type.name}; "
                                   f"projections must be TQ1_0, TQ2_0 or Q1_0")
        proj = key.split(".", 3)[-1]
        want = shapes.get(proj, (config["vocab_size"], config["hidden_size"]))
        if ggml_shape != want:
            raise ModelFormatError(f"GGUF tensor '{name}' has shape {ggml_shape} (out, in); the "
                                   f"metadata needs {want}")
        weights, scales = decode_gguf_blocks(t.data, t.tensor_type, name=name)
        if permute and proj in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = config["num_attention_heads" if proj == "self_attn.q_proj"
                           else "num_key_value_heads"]
            weights = _rope_permute(weights, heads, inverse=True)
            scales = _rope_permute(scales, heads, inverse=True)
        model.linears[key] = QuantLinear(
            name=name, weights=weights, scale=scales,
            group_size=gguf.GGML_QUANT_SIZES[t.tensor_type][0],
            mode=GGUF_WEIGHT_TYPES[t.tensor_type])
    return model


def save_gguf(model, path, *, arch=None, ternary_type="TQ2_0"):
    """Write a :class:`QuantModel` as a GGUF file with llama.cpp's names and block layouts.

    Ternary linears become ``ternary_type`` blocks (a per-tensor scale is repeated in every
    block, so it loads back with ``group_size`` 256), binary ones Q1_0 (ggml type 41), float
    tensors F32. Scales are stored as fp16. Metadata: the ``<arch>.*`` keys :func:`load_gguf`
    reads, from the config; other config fields are not stored.

    Parameters
    ----------
    model : QuantModel
        HF-style config and tensor names (see :func:`load_gguf` for the mapping); linears must
        be named as projections (``model.layers.N.self_attn.q_proj``, ...) or ``lm_head``.
    path : str or os.PathLike
        The ``.gguf`` file to write.
    arch : str, optional
        ``general.architecture``; by default ``bitnet-b1.58`` for ``hidden_act`` ``relu2``,
        else ``llama`` (whose q/k rows are then permuted the way llama.cpp expects).
    ternary_type : {"TQ2_0", "TQ1_0"}
        Block type of ternary linears.

    Raises
    ------
    ValueError
        If the config lacks a field, the architecture is unknown or disagrees with
        ``hidden_act``, a linear has an unknown name, a group size other than the block size
        (0 is allowed for ternary), rows that are not whole blocks, or a scale that overflows
        fp16.
    """
    if ternary_type not in ("TQ1_0", "TQ2_0"):
        raise ValueError(f"Ternary type must be 'TQ1_0' or 'TQ2_0', not {ternary_type!r}")
    config = _normalize_config(model.config, "Model config")
    act = config.get("hidden_act", "silu")
    arch = arch if arch is not None else ("bitnet-b1.58" if act == "relu2" else "llama")
    if arch not in _GGUF_ARCHS:
        raise ValueError(f"Architecture must be one of {', '.join(sorted(_GGUF_ARCHS))}, "
                         f"not {arch!r}")
    if _GGUF_ARCHS[arch][0] != act:
        raise ValueError(f"Architecture {arch!r} uses hidden_act {_GGUF_ARCHS[arch][0]!r}, the "
                         f"model's is {act!r}")
    permute = _GGUF_ARCHS[arch][1]
    encoded = []
    for key, lin in model.linears.items():
        name = "output.weight" if key == "lm_head" else _gguf_name(key)
        if name == key or _hf_name(name) != ((key, True) if key != "lm_head"
                                             else ("lm_head.weight", False)):
            raise ValueError(f"Linear {key} has no GGUF name")
        qtype = GGMLType.Q1_0 if lin.mode is WeightMode.BINARY else GGMLType[ternary_type]
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        out_f, in_f = lin.shape
        if lin.group_size == 0 and lin.mode is WeightMode.TERNARY and in_f % block == 0:
            scales = np.full((out_f, in_f // block), lin.scale, dtype=np.float32)
        elif lin.group_size == block:
            scales = lin.scale
        else:
            raise ValueError(f"Linear {key} ({lin.mode.value}, in_features {in_f}, group_size "
                             f"{lin.group_size}) does not fit {qtype.name} blocks of {block}")
        weights = lin.weights
        proj = key.split(".", 3)[-1]
        if permute and proj in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = config["num_attention_heads" if proj == "self_attn.q_proj"
                           else "num_key_value_heads"]
            weights = _rope_permute(weights, heads, inverse=False)
            scales = _rope_permute(scales, heads, inverse=False)
        try:
            data = encode_gguf_blocks(weights, scales, qtype)
        except ValueError as exc:
            raise ValueError(f"Linear {key}: {exc}") from None
        encoded.append((name, data, qtype))
    for hf, arr in model.tensors.items():
        encoded.append((_gguf_name(hf), np.ascontiguousarray(arr, dtype=np.float32), None))

    writer = gguf.GGUFWriter(None, arch)
    for key, hf in (("embedding_length", "hidden_size"), ("block_count", "num_hidden_layers"),
                    ("feed_forward_length", "intermediate_size"),
                    ("attention.head_count", "num_attention_heads"),
                    ("attention.head_count_kv", "num_key_value_heads"),
                    ("attention.key_length", "head_dim"), ("attention.value_length", "head_dim"),
                    ("rope.dimension_count", "head_dim"), ("vocab_size", "vocab_size"),
                    ("context_length", "max_position_embeddings")):
        if hf in config:
            writer.add_uint32(f"{arch}.{key}", int(config[hf]))
    for key, hf in (("rope.freq_base", "rope_theta"),
                    ("attention.layer_norm_rms_epsilon", "rms_norm_eps")):
        if hf in config:
            writer.add_float32(f"{arch}.{key}", float(config[hf]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, data, qtype in encoded:
        writer.add_tensor(name, data, raw_dtype=qtype)
    with _replacing(path) as tmp:
        try:
            writer.write_header_to_file(Path(tmp))
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
