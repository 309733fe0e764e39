import json
import os

import gguf
import numpy as np
import pytest
import safetensors.numpy
from conftest import env_int
from gguf import GGMLQuantizationType as GT
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lpu.host import loaders
from lpu.host.loaders import (
    ModelFormatError,
    decode_gguf_blocks,
    encode_gguf_blocks,
    load_gguf,
    load_hf_bitnet,
    pack_hf_ternary,
    save_gguf,
    save_hf_bitnet,
    unpack_hf_ternary,
)
from lpu.host.tensors import QuantLinear, QuantModel
from lpu.hw.formats import WeightMode

PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
# The test's own copy of llama.cpp's names, independent of the loader's table.
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}


def _fp16_exact(x):
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def _random_model(rng, *, hidden=64, inter=128, mode=WeightMode.TERNARY, group=0,
                  act="relu2", lm_head=False):
    """2 layers, 4 heads, 2 KV heads, vocab 50 (the sizes GGUF blocks allow)."""
    heads, kv_heads, vocab = 4, 2, 50
    hd = hidden // heads
    config = {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 2,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 128,
              "hidden_act": act}
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv_heads * hd, hidden),
              "self_attn.v_proj": (kv_heads * hd, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
              "mlp.down_proj": (hidden, inter)}
    values = [-1, 1] if mode is WeightMode.BINARY else [-1, 0, 1]

    def linear(name, shape):
        w = rng.choice(values, size=shape).astype(np.int8)
        if group:
            scale = _fp16_exact(rng.uniform(0.01, 1.0, (shape[0], shape[1] // group)))
        else:
            scale = np.float32(rng.uniform(0.01, 1.0))
        return QuantLinear(name, w, scale, group, mode)

    model = QuantModel(config=config)
    for layer in range(2):
        for proj in PROJ:
            key = f"model.layers.{layer}.{proj}"
            model.linears[key] = linear(key, shapes[proj])
        prefix = f"model.layers.{layer}."
        for name, n in (("input_layernorm", hidden), ("post_attention_layernorm", hidden),
                        ("self_attn.attn_sub_norm", hidden), ("mlp.ffn_sub_norm", inter)):
            model.tensors[f"{prefix}{name}.weight"] = rng.normal(1, 0.1, n).astype(np.float32)
    model.tensors["model.embed_tokens.weight"] = rng.normal(0, 1, (vocab, hidden)).astype(
        np.float32)
    model.tensors["model.norm.weight"] = rng.normal(1, 0.1, hidden).astype(np.float32)
    if lm_head:
        model.linears["lm_head"] = linear("lm_head", (vocab, hidden))
    return model


def _assert_same(a, b, *, floats=None):
    assert sorted(a.linears) == sorted(b.linears)
    for key, la in a.linears.items():
        lb = b.linears[key]
        assert lb.mode is la.mode and lb.group_size == la.group_size, key
        assert np.array_equal(lb.weights, la.weights), key
        assert np.array_equal(lb.scale, la.scale), key
    assert sorted(a.tensors) == sorted(b.tensors)
    for name, ta in a.tensors.items():
        want = ta if floats is None else floats(ta)
        assert b.tensors[name].dtype == np.float32
        assert np.array_equal(b.tensors[name], want), name


# -- HF BitNet packing ------------------------------------------------------------------------

HAND_W = [[1, 0], [-1, 1], [0, 0], [1, -1], [-1, -1], [0, 1], [1, 1], [-1, 0]]
# out = 8, so out/4 = 2: byte row j holds weight rows j, 2 + j, 4 + j, 6 + j at bits 0, 2, 4, 6,
# each as w + 1. Worked by hand from HAND_W column by column.
HAND_PACKED = [[0b10_00_01_10, 0b10_00_01_01],    # rows 0, 2, 4, 6
               [0b00_01_10_00, 0b01_10_00_10]]    # rows 1, 3, 5, 7


def test_hf_layout_hand_example():
    assert pack_hf_ternary(HAND_W).tolist() == HAND_PACKED
    assert unpack_hf_ternary(np.array(HAND_PACKED, np.uint8)).tolist() == HAND_W


@settings(max_examples=env_int("LPU_EXAMPLES", 100), deadline=None)
@given(data=st.data())
def test_hf_pack_round_trip(data):
    out_f = 4 * data.draw(st.integers(0, 12))
    in_f = data.draw(st.integers(0, 40))
    w = data.draw(hnp.arrays(np.int8, (out_f, in_f), elements=st.sampled_from([-1, 0, 1])))
    packed = pack_hf_ternary(w)
    assert packed.dtype == np.uint8 and packed.shape == (out_f // 4, in_f)
    assert np.array_equal(unpack_hf_ternary(packed), w)
    # the layout, element by element
    for r, c in zip(*np.nonzero(np.ones_like(w)), strict=True):
        q = out_f // 4
        assert (packed[r % q, c] >> (2 * (r // q))) & 3 == w[r, c] + 1


def test_hf_pack_errors():
    with pytest.raises(ValueError, match=r"^HF BitNet packing needs out_features divisible by 4, "
                                         r"not 6$"):
        pack_hf_ternary(np.zeros((6, 2), np.int8))
    with pytest.raises(ValueError, match=r"^Weights must be 2-D, not shape \(4,\)$"):
        pack_hf_ternary(np.zeros(4, np.int8))
    with pytest.raises(ValueError, match=r"^Weights must be in \{0, 1, -1\} for ternary mode, "
                                         r"not 2 at index \(1, 0\)$"):
        pack_hf_ternary([[0], [2], [0], [0]])
    with pytest.raises(ModelFormatError, match=r"^Packed array holds the invalid 2-bit code 3 "
                                               r"for weight \(3, 1\) \(packed byte \(1, 1\) bits "
                                               r"3\.\.2\)$"):
        unpack_hf_ternary(np.array([[0, 0], [0, 0b1100]], np.uint8))
    with pytest.raises(ModelFormatError, match=r"^Packed array must be a 2-D uint8 array, not "
                                               r"int8 of shape \(2, 2\)$"):
        unpack_hf_ternary(np.zeros((2, 2), np.int8))


# -- HF BitNet files --------------------------------------------------------------------------

@pytest.fixture
def hf_dir(tmp_path, rng):
    model = _random_model(rng)
    save_hf_bitnet(model, tmp_path / "m")
    return model, tmp_path / "m"


def test_hf_round_trip(hf_dir):
    model, path = hf_dir
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    loaded = load_hf_bitnet(path)
    _assert_same(model, loaded)
    for key, lin in loaded.linears.items():
        assert lin.name == f"{key}.weight" and lin.group_size == 0
    for key, value in model.config.items():
        assert loaded.config[key] == value
    assert loaded.config["head_dim"] == 16
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "bitnet" and cfg["hidden_act"] == "relu2"
    assert cfg["quantization_config"]["linear_class"] == "autobitlinear"
    save_hf_bitnet(loaded, path, scale_convention="divide")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["linear_class"] == "bitlinear"
    raw = safetensors.numpy.load_file(path / "model.safetensors")
    q = model.linears["model.layers.1.self_attn.k_proj"]
    assert raw["model.layers.1.self_attn.k_proj.weight_scale"] == np.float32(1 / q.scale)
    assert np.allclose(load_hf_bitnet(path, scale_convention="divide").linears[
        "model.layers.1.self_attn.k_proj"].scale, q.scale, rtol=1e-6)
    save_hf_bitnet(loaded, path)
    # The file is a plain safetensors file the reference library reads: packed U8 + scale.
    raw = safetensors.numpy.load_file(path / "model.safetensors")
    q = model.linears["model.layers.1.self_attn.k_proj"]
    assert raw["model.layers.1.self_attn.k_proj.weight"].dtype == np.uint8
    assert np.array_equal(raw["model.layers.1.self_attn.k_proj.weight"],
                          pack_hf_ternary(q.weights))
    assert raw["model.layers.1.self_attn.k_proj.weight_scale"].tolist() == [q.scale]


def _bf16_reference(x):
    # gguf's BF16 codec (round to nearest even) as an independent reference
    return gguf.quants.dequantize(gguf.quants.quantize(x, GT.BF16), GT.BF16)


@pytest.mark.parametrize("dtype, rounding", [
    ("bfloat16", _bf16_reference), ("float16", _fp16_exact)])
def test_hf_round_trip_narrow_floats(tmp_path, rng, dtype, rounding):
    model = _random_model(rng)
    save_hf_bitnet(model, tmp_path, dtype=dtype)
    loaded = load_hf_bitnet(tmp_path)
    for key, lin in model.linears.items():
        assert np.array_equal(loaded.linears[key].weights, lin.weights)
        assert loaded.linears[key].scale == rounding(np.array([lin.scale]))[0]
    for name, arr in model.tensors.items():
        assert np.array_equal(loaded.tensors[name], rounding(arr)), name


def test_hf_sharded(tmp_path, rng):
    model = _random_model(rng)
    save_hf_bitnet(model, tmp_path, max_shard_bytes=8192)
    shards = sorted(f for f in os.listdir(tmp_path) if f.startswith("model-"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    _assert_same(model, load_hf_bitnet(tmp_path))
    # writing unsharded over it removes the index, so the directory loads the new file
    other = _random_model(rng)
    save_hf_bitnet(other, tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    _assert_same(other, load_hf_bitnet(tmp_path))


def _hand_checkpoint(path, rng, *, scale=0.5, **config_over):
    """A checkpoint written with the safetensors library itself (fp16 floats), not our writer."""
    model = _random_model(rng)
    config = dict(model.config, **config_over)
    tensors = {}
    for key, lin in model.linears.items():
        tensors[f"{key}.weight"] = pack_hf_ternary(lin.weights)
        tensors[f"{key}.weight_scale"] = np.array([scale], np.float16)
    for name, arr in model.tensors.items():
        tensors[name] = arr.astype(np.float16)
    path.mkdir(exist_ok=True)
    safetensors.numpy.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))
    return model, tensors


@pytest.mark.parametrize("convention, scale", [("multiply", 0.5), ("divide", 2.0)])
def test_hf_scale_convention(tmp_path, rng, convention, scale):
    # 2B4T's offline AutoBitLinear computes F.linear(x, w) * weight_scale: W = w * weight_scale.
    model, _ = _hand_checkpoint(tmp_path, rng, scale=0.5)
    loaded = load_hf_bitnet(tmp_path, scale_convention=convention)
    lin = loaded.linears["model.layers.0.mlp.up_proj"]
    assert lin.scale == np.float32(scale)
    w = model.linears["model.layers.0.mlp.up_proj"].weights
    assert np.array_equal(lin.dequantize(), w * np.float32(scale))
    assert loaded.tensors["model.norm.weight"].dtype == np.float32
    assert np.array_equal(loaded.tensors["model.norm.weight"],
                          _fp16_exact(model.tensors["model.norm.weight"]))


def _raw_safetensors(entries):
    """Bytes of a safetensors file from (name, dtype, shape, raw bytes) written by hand."""
    header, blobs, offset = {}, b"", 0
    for name, dtype, shape, blob in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs += blob
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + blobs


def test_hf_bf16_values(tmp_path, rng):
    # bf16 bits written by hand: 0x3FC0 = 1.5, 0xC000 = -2.0, 0x0000 = 0.0, 0x4049 = 3.140625
    _hand_checkpoint(tmp_path, rng)
    tensors = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    entries = [(n, {np.uint8: "U8", np.float16: "F16"}[a.dtype.type], list(a.shape), a.tobytes())
               for n, a in tensors.items() if n != "model.norm.weight"]
    bits = np.array([0x3FC0, 0xC000, 0x0000, 0x4049] * 16, "<u2")
    entries.append(("model.norm.weight", "BF16", [64], bits.tobytes()))
    (tmp_path / "model.safetensors").write_bytes(_raw_safetensors(entries))
    norm = load_hf_bitnet(tmp_path).tensors["model.norm.weight"]
    assert norm[:4].tolist() == [1.5, -2.0, 0.0, 3.140625]


def _resave(path, edit):
    tensors = safetensors.numpy.load_file(path / "model.safetensors")
    edit(tensors)
    safetensors.numpy.save_file(tensors, path / "model.safetensors")


def _edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


Q = "model.layers.0.self_attn.q_proj"


def test_hf_errors_config(hf_dir):
    _, path = hf_dir
    _edit_config(path, lambda c: c.pop("hidden_size"))
    with pytest.raises(ModelFormatError, match=r"^config\.json has no field 'hidden_size'$"):
        load_hf_bitnet(path)
    _edit_config(path, lambda c: c.update(hidden_size="64"))
    with pytest.raises(ModelFormatError, match=r"^config\.json field 'hidden_size' must be a "
                                               r"positive integer, not '64'$"):
        load_hf_bitnet(path)
    _edit_config(path, lambda c: c.update(hidden_size=64, num_key_value_heads=3))
    with pytest.raises(ModelFormatError, match=r"^config\.json: num_attention_heads 4 is not a "
                                               r"multiple of num_key_value_heads 3$"):
        load_hf_bitnet(path)
    (path / "config.json").write_text("{")
    with pytest.raises(ModelFormatError, match=r"^config\.json is not valid JSON \(.+\)$"):
        load_hf_bitnet(path)
    (path / "config.json").unlink()
    with pytest.raises(ModelFormatError, match=r"^.+ has no config\.json$"):
        load_hf_bitnet(path)
    with pytest.raises(ValueError, match=r"^Scale convention must be 'multiply' or 'divide', "
                                         r"not 'times'$"):
        load_hf_bitnet(path, scale_convention="times")


def test_hf_error_no_weights(tmp_path, rng):
    (tmp_path / "config.json").write_text(json.dumps(_random_model(rng).config))
    with pytest.raises(ModelFormatError, match=r"^.+ holds neither model\.safetensors nor "
                                               r"model\.safetensors\.index\.json$"):
        load_hf_bitnet(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop(f"{Q}.weight_scale"),
     rf"^Tensor {Q}\.weight_scale is missing \(every packed BitLinear weight has one\)$"),
    (lambda t: t.pop("model.layers.1.mlp.down_proj.weight"),
     r"^Tensor model\.layers\.1\.mlp\.down_proj\.weight is missing from the checkpoint$"),
    (lambda t: t.update({f"{Q}.weight": t[f"{Q}.weight"][:15]}),
     rf"^Tensor {Q}\.weight has packed shape \(15, 64\), \(60, 64\) unpacked; config\.json "
     r"needs \(64, 64\)$"),
    (lambda t: t[f"{Q}.weight"].__setitem__((2, 5), 0b11_01_01_01),
     rf"^Tensor {Q}\.weight holds the invalid 2-bit code 3 for weight \(50, 5\) \(packed byte "
     r"\(2, 5\) bits 7\.\.6\)$"),
    (lambda t: t.update({f"{Q}.weight": np.zeros((64, 64), np.float32)}),
     rf"^Tensor {Q}\.weight has dtype F32 and shape \(64, 64\); packed BitLinear weights are "
     r"2-D U8$"),
    (lambda t: t.update({f"{Q}.weight_scale": np.ones(2, np.float32)}),
     rf"^Tensor {Q}\.weight_scale must be a one-element float tensor, not F32 of shape \(2,\)$"),
    (lambda t: t.update({f"{Q}.weight_scale": np.zeros(1, np.float32)}),
     rf"^Tensor {Q}\.weight_scale must be a positive finite number, not 0\.0$"),
    (lambda t: t.update({"model.embed_tokens.weight": np.zeros((50, 63), np.float32)}),
     r"^Tensor model\.embed_tokens\.weight has shape \(50, 63\); config\.json needs "
     r"\(50, 64\)$"),
    (lambda t: t.update({"model.norm.weight": np.zeros(64, np.int32)}),
     r"^Tensor model\.norm\.weight has dtype I32, not a float type \(F32, F16, BF16\)$"),
])
def test_hf_errors_tensors(hf_dir, edit, message):
    _, path = hf_dir
    _resave(path, edit)
    with pytest.raises(ModelFormatError, match=message):
        load_hf_bitnet(path)


def test_hf_errors_truncated(hf_dir):
    _, path = hf_dir
    file = path / "model.safetensors"
    data = file.read_bytes()
    hlen = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + hlen])
    header.pop("__metadata__")
    last = max(header, key=lambda n: header[n]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    file.write_bytes(data[:-1])
    with pytest.raises(ModelFormatError, match=(
            rf"^model\.safetensors is truncated: tensor {last} needs bytes {8 + hlen + begin} "
            rf"to {8 + hlen + end}, the file has {len(data) - 1}$")):
        load_hf_bitnet(path)
    file.write_bytes(data[:100])
    with pytest.raises(ModelFormatError, match=rf"^model\.safetensors is truncated: its header "
                                               rf"needs {hlen} bytes after the first 8, the file "
                                               r"has 92$"):
        load_hf_bitnet(path)
    file.write_bytes(data[:5])
    with pytest.raises(ModelFormatError, match=r"^model\.safetensors is truncated: 5 bytes, no "
                                               r"header length$"):
        load_hf_bitnet(path)
    file.write_bytes((4).to_bytes(8, "little") + b"\xff{}}")
    with pytest.raises(ModelFormatError, match=r"^model\.safetensors has a header that is not "
                                               r"JSON \(.+\)$"):
        load_hf_bitnet(path)
    file.write_bytes(_raw_safetensors([("x", "F32", [3], b"\0" * 8)]))
    with pytest.raises(ModelFormatError, match=r"^model\.safetensors: tensor x spans 8 bytes, its "
                                               r"dtype F32 and shape \(3,\) need 12$"):
        load_hf_bitnet(path)


def test_hf_errors_shards(tmp_path, rng):
    save_hf_bitnet(_random_model(rng), tmp_path, max_shard_bytes=8192)
    shard = sorted(f for f in os.listdir(tmp_path) if f.startswith("model-"))[1]
    (tmp_path / shard).unlink()
    with pytest.raises(ModelFormatError, match=rf"^Shard {shard.replace('.', '[.]')} listed in "
                                               r"model\.safetensors\.index\.json does not "
                                               r"exist$"):
        load_hf_bitnet(tmp_path)


def test_hf_writer_errors(tmp_path, rng):
    model = _random_model(rng, mode=WeightMode.BINARY, group=32)
    with pytest.raises(ValueError, match=r"^HF BitNet stores ternary weights with one scale per "
                                         r"tensor; linear model\.layers\.0\.self_attn\.q_proj is "
                                         r"binary with group_size 32$"):
        save_hf_bitnet(model, tmp_path)
    model = _random_model(rng)
    del model.linears["model.layers.1.mlp.up_proj"]
    with pytest.raises(ValueError, match=r"^Model has no linear model\.layers\.1\.mlp\.up_proj$"):
        save_hf_bitnet(model, tmp_path)
    with pytest.raises(ValueError, match=r"^Dtype must be 'float32', 'bfloat16' or 'float16', "
                                         r"not 'float64'$"):
        save_hf_bitnet(model, tmp_path, dtype="float64")
    assert os.listdir(tmp_path) == []


def test_hf_writer_is_atomic(hf_dir, monkeypatch, rng):
    _, path = hf_dir
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(loaders.os, "replace", fail)
    with pytest.raises(OSError, match=r"^disk full$"):
        save_hf_bitnet(_random_model(rng), path)
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before


# -- GGUF block codecs ------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", [GT.TQ1_0, GT.TQ2_0], ids=["TQ1_0", "TQ2_0"])
def test_tq_codecs_match_gguf(rng, qtype):
    w = rng.integers(-1, 2, (5, 768)).astype(np.int8)
    s = _fp16_exact(rng.uniform(0.01, 2, (5, 3)))
    x = (w.reshape(5, 3, 256) * s[:, :, None]).reshape(5, 768)
    raw = gguf.quants.quantize(x, qtype)
    assert np.array_equal(encode_gguf_blocks(w, s, qtype), raw)
    w2, s2 = decode_gguf_blocks(raw, qtype)
    assert np.array_equal(w2, w) and np.array_equal(s2, s)
    # the integers times the scales are exactly what gguf's dequantizer makes of the blocks
    assert np.array_equal(QuantLinear("t", w2, s2, 256).dequantize(),
                          gguf.quants.dequantize(raw, qtype))


def test_q1_0_layout_hand_example():
    # One block: d = 0.5 (fp16 0x3800, little-endian, first), then sign bits LSB first, 1 = +1.
    w = -np.ones((1, 128), np.int8)
    w[0, [0, 3, 8, 127]] = 1
    raw = bytes([0x00, 0x38, 0b0000_1001, 0b0000_0001] + [0] * 13 + [0b1000_0000])
    assert encode_gguf_blocks(w, [[0.5]], GT.Q1_0).tobytes() == raw
    w2, s2 = decode_gguf_blocks(np.frombuffer(raw, np.uint8).reshape(1, 18), GT.Q1_0)
    assert np.array_equal(w2, w) and s2.tolist() == [[0.5]]


def _q1_0_reference(raw, n):
    """ggml's dequantize_row_q1_0, element by element (gguf 0.19 has no Q1_0 dequantizer)."""
    out = []
    for b in range(n // 128):
        blk = raw[18 * b:18 * b + 18]
        d = float(np.frombuffer(bytes(blk[:2]), "<f2")[0])
        out += [d * (2 * ((blk[2 + j // 8] >> (j % 8)) & 1) - 1) for j in range(128)]
    return np.array(out, np.float32)


def test_q1_0_against_reference(rng):
    w = rng.choice([-1, 1], (3, 256)).astype(np.int8)
    s = _fp16_exact(rng.uniform(0.01, 1, (3, 2)))
    raw = encode_gguf_blocks(w, s, GT.Q1_0)
    assert raw.shape == (3, 36)
    ref = np.stack([_q1_0_reference(row.tolist(), 256) for row in raw])
    w2, s2 = decode_gguf_blocks(raw, GT.Q1_0)
    assert np.array_equal(QuantLinear("t", w2, s2, 128, WeightMode.BINARY).dequantize(), ref)


def test_codec_errors():
    with pytest.raises(ValueError, match=r"^GGUF weight type must be TQ1_0, TQ2_0 or Q1_0, not "
                                         r"Q4_0$"):
        encode_gguf_blocks(np.zeros((1, 32), np.int8), [[1.0]], GT.Q4_0)
    with pytest.raises(ValueError, match=r"^Rows of 100 weights are not a multiple of the TQ2_0 "
                                         r"block size 256$"):
        encode_gguf_blocks(np.zeros((1, 100), np.int8), [[1.0]], GT.TQ2_0)
    with pytest.raises(ValueError, match=r"^Weights must be in \{1, -1\} for binary mode, not 0 "
                                         r"at index \(0, 0\)$"):
        encode_gguf_blocks(np.zeros((1, 128), np.int8), [[1.0]], GT.Q1_0)
    with pytest.raises(ValueError, match=r"^Scales must be finite in fp16, not 100000\.0$"):
        encode_gguf_blocks(np.zeros((1, 256), np.int8), [[1e5]], GT.TQ2_0)
    with pytest.raises(ModelFormatError, match=r"^GGUF tensor 't' must be 2-D uint8 rows of whole "
                                               r"TQ2_0 blocks of 66 bytes, not uint8 of shape "
                                               r"\(1, 65\)$"):
        decode_gguf_blocks(np.zeros((1, 65), np.uint8), GT.TQ2_0, name="t")


# -- GGUF files -------------------------------------------------------------------------------

def _gguf_name(key):
    if key == "model.embed_tokens.weight":
        return "token_embd.weight"
    if key == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = key.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def _write_with_package(path, model, qtype, *, arch="bitnet-b1.58", meta=None, skip=(),
                        override=None):
    """A GGUF file made with gguf's own writer and quantizer, as llama.cpp's converter does."""
    cfg = model.config
    keys = {"embedding_length": cfg["hidden_size"], "block_count": cfg["num_hidden_layers"],
            "feed_forward_length": cfg["intermediate_size"],
            "attention.head_count": cfg["num_attention_heads"],
            "attention.head_count_kv": cfg["num_key_value_heads"],
            "context_length": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"]}
    keys.update(meta or {})
    w = gguf.GGUFWriter(path, arch)
    for key, value in keys.items():
        if key not in skip:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", cfg["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    for key, lin in model.linears.items():
        name = _gguf_name(key)
        if override and name in override:
            w.add_tensor(name, *override[name])
        else:
            w.add_tensor(name, gguf.quants.quantize(lin.dequantize(), qtype), raw_dtype=qtype)
    for name, arr in model.tensors.items():
        w.add_tensor(_gguf_name(name), arr.astype(np.float16) if arr.ndim == 2 else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GGUF_SIZES = {"hidden": 256, "inter": 512, "group": 256}   # rows of whole 256-weight blocks


@pytest.mark.parametrize("qtype", [GT.TQ1_0, GT.TQ2_0], ids=["TQ1_0", "TQ2_0"])
def test_gguf_written_by_gguf_package(tmp_path, rng, qtype):
    model = _random_model(rng, **GGUF_SIZES)
    _write_with_package(tmp_path / "m.gguf", model, qtype)
    loaded = load_gguf(tmp_path / "m.gguf")
    _assert_same(model, loaded, floats=lambda a: _fp16_exact(a) if a.ndim == 2 else a)
    raw = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    for key, lin in loaded.linears.items():
        assert lin.name == _gguf_name(key) and lin.group_size == 256
        assert np.array_equal(lin.dequantize(), gguf.quants.dequantize(raw[lin.name].data, qtype))
    assert loaded.config == {
        "model_type": "bitnet-b1.58", "hidden_act": "relu2", "hidden_size": 256,
        "num_hidden_layers": 2, "intermediate_size": 512, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 50, "max_position_embeddings": 128,
        "rope_theta": 500000.0, "rms_norm_eps": float(np.float32(1e-5)),
        "tie_word_embeddings": True, "head_dim": 64}


@pytest.mark.parametrize("kind", ["TQ1_0", "TQ2_0", "TQ2_0 per tensor", "Q1_0"])
def test_gguf_round_trip(tmp_path, rng, kind):
    if kind == "Q1_0":
        model = _random_model(rng, hidden=128, inter=256, group=128, mode=WeightMode.BINARY,
                              act="silu", lm_head=True)
    else:
        group = 0 if kind.endswith("per tensor") else 256
        model = _random_model(rng, hidden=256, inter=512, group=group, lm_head=True)
        if not group:   # per-tensor scales come back repeated per block, fp16-rounded
            for lin in model.linears.values():
                lin.scale = _fp16_exact(lin.scale)
    save_gguf(model, tmp_path / "m.gguf", ternary_type="TQ1_0" if kind == "TQ1_0" else "TQ2_0")
    loaded = load_gguf(tmp_path / "m.gguf")
    if kind.endswith("per tensor"):
        for key, lin in model.linears.items():
            got = loaded.linears[key]
            assert got.group_size == 256 and np.all(got.scale == lin.scale)
            assert np.array_equal(got.weights, lin.weights)
        return
    _assert_same(model, loaded)
    assert loaded.config["tie_word_embeddings"] is False
    assert loaded.config["model_type"] == ("llama" if kind == "Q1_0" else "bitnet-b1.58")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "rope_theta",
                "hidden_act"):
        assert loaded.config[key] == model.config[key], key
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    want = GT.Q1_0 if kind == "Q1_0" else GT[kind]
    assert types["blk.1.ffn_down.weight"] == want and types["output.weight"] == want
    assert types["token_embd.weight"] == GT.F32


def test_gguf_llama_qk_rows_permuted(tmp_path, rng):
    model = _random_model(rng, hidden=256, inter=512, group=256, act="silu")
    save_gguf(model, tmp_path / "m.gguf", arch="llama")
    raw = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}

    def permute(w, heads):   # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
            .reshape(w.shape)

    for proj, gname, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2),
                               ("v_proj", "attn_v", None)):
        lin = model.linears[f"model.layers.1.self_attn.{proj}"]
        w, s = decode_gguf_blocks(raw[f"blk.1.{gname}.weight"].data, GT.TQ2_0)
        assert np.array_equal(w, permute(lin.weights, heads) if heads else lin.weights)
        assert np.array_equal(s, permute(lin.scale, heads) if heads else lin.scale)
    _assert_same(model, load_gguf(tmp_path / "m.gguf"))


@pytest.fixture
def gguf_model(rng):
    return _random_model(rng, **GGUF_SIZES)


def _load_error(path, message):
    with pytest.raises(ModelFormatError, match=message):
        load_gguf(path)


def test_gguf_errors_not_gguf(tmp_path, gguf_model):
    (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04rest")
    _load_error(tmp_path / "junk.gguf", r"^junk\.gguf is not a GGUF file: it starts with "
                                        r"b'PK\\x03\\x04'$")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _load_error(tmp_path / "empty.gguf", r"^empty\.gguf is not a GGUF file: it starts with b''$")
    save_gguf(gguf_model, tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "m.gguf").write_bytes(data[:60])
    _load_error(tmp_path / "m.gguf", r"^GGUF file m\.gguf is truncated or malformed in its "
                                     r"header \(.+\)$")


def test_gguf_error_truncated_tensor(tmp_path, gguf_model):
    save_gguf(gguf_model, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    last = max(reader.tensors, key=lambda t: t.data_offset)
    begin, end = last.data_offset, last.data_offset + last.n_bytes
    del reader
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "m.gguf").write_bytes(data[:end - 1])
    _load_error(tmp_path / "m.gguf", rf"^GGUF tensor '{last.name}' is truncated: it needs bytes "
                                     rf"{begin} to {end}, the file has {end - 1}$")


def test_gguf_error_unknown_type(tmp_path, gguf_model):
    save_gguf(gguf_model, tmp_path / "m.gguf")
    field = next(t.field for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors
                 if t.name == "blk.0.attn_v.weight")
    # tensor info: name length (8), name, n_dims (4), dims (8 each), type (4), offset (8)
    at = field.offset + 8 + len("blk.0.attn_v.weight") + 4 + 8 * 2
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    assert int.from_bytes(data[at:at + 4], "little") == GT.TQ2_0
    data[at:at + 4] = (99).to_bytes(4, "little")
    (tmp_path / "m.gguf").write_bytes(bytes(data))
    _load_error(tmp_path / "m.gguf", r"^GGUF tensor 'blk\.0\.attn_v\.weight' has the unknown "
                                     r"type 99$")


def _bad_tq2(rows, in_f):
    raw = gguf.quants.quantize(np.ones((rows, in_f), np.float32), GT.TQ2_0)
    raw[1, 7] = 0b11_00_00_00   # weight 128h + 32k + i with h = 0, k = 3, i = 7
    return raw, None, GT.TQ2_0


def _bad_tq1(rows, in_f):
    raw = gguf.quants.quantize(np.ones((rows, in_f), np.float32), GT.TQ1_0)
    valid = {(v * 256 + 242) // 243 for v in range(243)}
    raw[2, 40] = min(set(range(256)) - valid)   # a byte of the 16-wide part of row 2's block
    return raw, None, GT.TQ1_0


@pytest.mark.parametrize("override, meta, skip, arch, message", [
    ({"blk.0.attn_q.weight": (np.zeros((256, 256), np.float16),)}, None, (), "bitnet-b1.58",
     r"^GGUF tensor 'blk\.0\.attn_q\.weight' has type F16; projections must be TQ1_0, TQ2_0 or "
     r"Q1_0$"),
    ({}, {"attention.head_count_kv": 1}, (), "bitnet-b1.58",
     r"^GGUF tensor 'blk\.0\.attn_k\.weight' has shape \(128, 256\) \(out, in\); the metadata "
     r"needs \(64, 256\)$"),
    ({}, None, ("block_count",), "bitnet-b1.58",
     r"^GGUF metadata has no key 'bitnet-b1\.58\.block_count'$"),
    ({}, {"block_count": 3}, (), "bitnet-b1.58", r"^GGUF tensor 'blk\.2\.attn_q\.weight' is "
                                                 r"missing$"),
    ({}, None, (), "gpt2", r"^GGUF architecture 'gpt2' is not supported \(known: bitnet, "
                           r"bitnet-25, bitnet-b1\.58, llama, qwen2, qwen3\)$"),
    ({"blk.1.ffn_up.weight": _bad_tq2(512, 256)}, None, (), "bitnet-b1.58",
     r"^GGUF tensor 'blk\.1\.ffn_up\.weight' holds the invalid TQ2_0 code 3 for weight "
     r"\(1, 103\)$"),
    ({"blk.1.ffn_up.weight": _bad_tq1(512, 256)}, None, (), "bitnet-b1.58",
     r"^GGUF tensor 'blk\.1\.ffn_up\.weight' holds the byte 1, no TQ1_0 base-3 encoding, in "
     r"block 0 of row 2$"),
    ({"blk.0.attn_q.weight": (np.zeros(66, np.int8), (1, 100), GT.TQ2_0)}, None, (),
     "bitnet-b1.58", r"^GGUF tensor 'blk\.0\.attn_q\.weight' has rows of 100 weights, not a "
                     r"multiple of the TQ2_0 block size 256$"),
])
def test_gguf_errors(tmp_path, gguf_model, override, meta, skip, arch, message):
    _write_with_package(tmp_path / "m.gguf", gguf_model, GT.TQ2_0, arch=arch, meta=meta,
                        skip=skip, override=override)
    _load_error(tmp_path / "m.gguf", message)


def test_save_gguf_errors(tmp_path, rng):
    model = _random_model(rng)   # hidden 64: no whole TQ2_0 blocks
    with pytest.raises(ValueError, match=r"^Linear model\.layers\.0\.self_attn\.q_proj \(ternary, "
                                         r"in_features 64, group_size 0\) does not fit TQ2_0 "
                                         r"blocks of 256$"):
        save_gguf(model, tmp_path / "m.gguf")
    model = _random_model(rng, hidden=128, inter=256, group=64, mode=WeightMode.BINARY)
    with pytest.raises(ValueError, match=r"^Linear model\.layers\.0\.self_attn\.q_proj \(binary, "
                                         r"in_features 128, group_size 64\) does not fit Q1_0 "
                                         r"blocks of 128$"):
        save_gguf(model, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match=r"^Architecture 'llama' uses hidden_act 'silu', the "
                                         r"model's is 'relu2'$"):
        save_gguf(model, tmp_path / "m.gguf", arch="llama")
    with pytest.raises(ValueError, match=r"^Architecture must be one of bitnet, bitnet-25, "
                                         r"bitnet-b1\.58, llama, qwen2, qwen3, not 'gpt2'$"):
        save_gguf(model, tmp_path / "m.gguf", arch="gpt2")
    with pytest.raises(ValueError, match=r"^Ternary type must be 'TQ1_0' or 'TQ2_0', not "
                                         r"'Q2_K'$"):
        save_gguf(model, tmp_path / "m.gguf", ternary_type="Q2_K")
    model = _random_model(rng, **GGUF_SIZES)
    model.linears["model.layers.0.mlp.proj"] = model.linears.pop("model.layers.0.mlp.up_proj")
    with pytest.raises(ValueError, match=r"^Linear model\.layers\.0\.mlp\.proj has no GGUF "
                                         r"name$"):
        save_gguf(model, tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_save_gguf_is_atomic(tmp_path, gguf_model, monkeypatch):
    save_gguf(gguf_model, tmp_path / "m.gguf")
    before = (tmp_path / "m.gguf").read_bytes()

    def fail(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match=r"^disk full$"):
        save_gguf(gguf_model, tmp_path / "m.gguf", ternary_type="TQ1_0")
    assert os.listdir(tmp_path) == ["m.gguf"]
    assert (tmp_path / "m.gguf").read_bytes() == before


def test_gguf_error_array_length(tmp_path, gguf_model):
    # gguf's reader would loop ~2**40 times over empty views on this file; ours stops at once.
    save_gguf(gguf_model, tmp_path / "m.gguf")
    w = gguf.GGUFWriter(tmp_path / "a.gguf", "bitnet-b1.58")
    w.add_array("lpu.flags", [True, False, True])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray((tmp_path / "a.gguf").read_bytes())
    at = data.index(b"lpu.flags") + len(b"lpu.flags") + 4   # the value: item type, u64 length
    assert int.from_bytes(data[at + 4:at + 12], "little") == 3
    data[at + 4:at + 12] = (1 << 40).to_bytes(8, "little")
    (tmp_path / "a.gguf").write_bytes(bytes(data))
    _load_error(tmp_path / "a.gguf", rf"^GGUF metadata array at byte {at} claims {1 << 40} "
                                     rf"items, more than the {len(data) - at - 12} bytes left in "
                                     r"the file$")
