"""Device-memory images and descriptors for the :class:`~lpu.hw.streamer.WeightStreamer`.

The layout is defined in :mod:`lpu.hw.streamer`; this module writes it (and reads it back for
the golden model) with the one format definition, :mod:`lpu.hw.formats`.
"""

import json
from pathlib import Path

import numpy as np

from lpu.hw.formats import FormatCode, WeightFormat, WeightMode, check_weights, pack, unpack
from lpu.hw.streamer import act_address

__all__ = ["weight_image", "image_words", "read_image", "activation_entries",
           "check_descriptor", "descriptor", "image_word_count", "result_matrix",
           "device_format", "model_image", "flash_image", "read_flash_layout",
           "check_flash_layout"]


def _tile_order(weights, fmt, lanes, pes):
    fmt = WeightFormat(fmt)
    w = check_weights(weights, fmt.mode)
    if w.ndim != 2:
        raise ValueError(f"Weight matrix must be 2-D, not shape {w.shape}")
    m, k = w.shape
    mb, kt = -(-m // pes), -(-k // lanes)
    wp = np.full((mb * pes, kt * lanes), fmt.pad_weight, dtype=np.int8)
    wp[:m, :k] = w
    # row block, tile along the row, PE, lane
    return wp.reshape(mb, pes, kt, lanes).transpose(0, 2, 1, 3).reshape(-1)


def image_word_count(rows, cols, fmt, *, lanes, pes, word_bits):
    """Words the image of a rows x cols matrix occupies."""
    count = -(-rows // pes) * pes * -(-cols // lanes) * lanes
    nbytes = WeightFormat(fmt).packed_size(count)
    return -(-nbytes // (word_bits // 8))


def weight_image(weights, fmt, *, lanes, pes, word_bits):
    """The bytes of ``weights`` (M x K) as the streamer reads them, padded to whole words."""
    stream = _tile_order(weights, fmt, lanes, pes)
    packed = pack(stream, fmt)
    wb = word_bits // 8
    out = np.zeros(-(-len(packed) // wb) * wb, dtype=np.uint8)
    out[:len(packed)] = packed
    return out


def image_words(image, word_bits):
    """Little-endian words of an image (bytes) as Python ints, for a memory's initial contents."""
    wb = word_bits // 8
    b = np.asarray(image, dtype=np.uint8).reshape(-1, wb)
    return [int.from_bytes(row.tobytes(), "little") for row in b]


def read_image(image, fmt, rows, cols, *, lanes, pes):
    """Read an image back into the M x K matrix (what the golden model computes with)."""
    fmt = WeightFormat(fmt)
    mb, kt = -(-rows // pes), -(-cols // lanes)
    count = mb * pes * kt * lanes
    nbytes = fmt.packed_size(count)
    image = np.asarray(image, dtype=np.uint8)
    if len(image) < nbytes:
        raise ValueError(f"Weight image holds {len(image)} bytes, a {rows} x {cols} matrix "
                         f"needs {nbytes}")
    stream = unpack(image[:nbytes], fmt, count)
    wp = stream.reshape(mb, kt, pes, lanes).transpose(0, 2, 1, 3).reshape(mb * pes, kt * lanes)
    return wp[:rows, :cols]


def activation_entries(acts, *, lanes, act_tiles):
    """Activation-buffer writes for ``acts`` (K or K x V): a list of (address, N values).

    Lanes beyond K are written as zeros, so padded weights never contribute.
    """
    a = np.asarray(acts, dtype=np.int64)
    if a.ndim == 1:
        a = a[:, None]
    k, v = a.shape
    kt = -(-k // lanes)
    ap = np.zeros((kt * lanes, v), dtype=np.int64)
    ap[:k] = a
    return [(act_address(t, vi, act_tiles), [int(x) for x in ap[t * lanes:(t + 1) * lanes, vi]])
            for vi in range(v) for t in range(kt)]


def result_matrix(results, rows, vectors):
    """The ``(rows, vectors)`` matrix of a job's results as read from the output buffer.

    The scale unit emits one entry of P sums per row block and vector (row block, then vector;
    PE ``p`` holds row ``block * P + p``); rows past ``rows`` are padding.
    """
    r = np.asarray(results, dtype=np.int64)
    pes = r.shape[1]
    return r.reshape(-1, vectors, pes).transpose(0, 2, 1).reshape(-1, vectors)[:rows]


def check_descriptor(streamer, *, base, rows, cols, fmt, group=0, vectors=1):
    """Raise ValueError if the streamer would refuse this job (mirrors its hardware checks)."""
    for name, value in (("rows", rows), ("cols", cols), ("vectors", vectors)):
        if value <= 0:
            raise ValueError(f"Descriptor {name} must be positive, not {value}")
    fmt = WeightFormat(fmt)
    if fmt not in streamer.formats:
        built = ", ".join(f.value for f in streamer.formats)
        raise ValueError(f"Weight format '{fmt.value}' is not one this streamer was built for "
                         f"({built})")
    if cols > streamer.max_k:
        raise ValueError(f"Descriptor cols ({cols}) exceed the maximum row length "
                         f"({streamer.max_k})")
    if rows > 0xFFFF:
        raise ValueError(f"Descriptor rows ({rows}) exceed 65535")
    if vectors > streamer.max_vectors:
        raise ValueError(f"Descriptor vectors ({vectors}) exceed the maximum vector count "
                         f"({streamer.max_vectors})")
    if group and group % streamer.lanes:
        raise ValueError(f"Group size ({group}) must be a multiple of the lane count "
                         f"({streamer.lanes})")
    words = image_word_count(rows, cols, fmt, lanes=streamer.lanes, pes=streamer.pes,
                             word_bits=streamer.word_bits)
    if base < 0 or base + words > streamer.mem_words:
        raise ValueError(f"Weight image at word {base} of {words} words runs past the end of "
                         f"memory ({streamer.mem_words} words)")


def descriptor(streamer, *, base, rows, cols, fmt, group=0, vectors=1, check=True):
    """The descriptor value for ``streamer``; checked first unless ``check`` is False."""
    if check:
        check_descriptor(streamer, base=base, rows=rows, cols=cols, fmt=fmt, group=group,
                         vectors=vectors)
    return {"base": base, "rows": rows, "cols": cols, "group": group, "vectors": vectors,
            "fmt": FormatCode.of(fmt)}


def device_format(mode, ternary_format="t2"):
    """The device format of a projection's weights: ``ternary_format`` (``t2`` or ``t5``) for
    ternary weights, ``b1`` for binary ones."""
    return WeightFormat(ternary_format) if WeightMode(mode) is WeightMode.TERNARY \
        else WeightFormat.B1


def model_image(linears, *, lanes, pes, word_bits, mem_words=None, ternary_format="t2"):
    """Every projection's weight image, one after another from word 0, in the order of
    ``linears`` (a sequence of :class:`~lpu.host.tensors.QuantLinear`): the device memory that
    :class:`~lpu.host.fabric.FabricBackend` writes as it first meets them, as one block for a
    memory programmed ahead (a flash image).

    Returns ``(image, layout)``: the bytes (little-endian words, as :func:`image_words` reads
    them) and ``{name: word address}``. Raises ValueError when ``mem_words`` is given and the
    image does not fit.
    """
    if ternary_format not in ("t2", "t5"):
        raise ValueError(f"Ternary format must be 't2' or 't5', not {ternary_format!r}")
    parts, layout, words = [], {}, 0
    for lin in linears:
        img = weight_image(lin.weights, device_format(lin.mode, ternary_format), lanes=lanes,
                           pes=pes, word_bits=word_bits)
        layout[lin.name] = words
        words += len(img) // (word_bits // 8)
        parts.append(img)
    if mem_words is not None and words > mem_words:
        raise ValueError(f"Weight image of {words} words does not fit device memory "
                         f"({mem_words} words)")
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return out.tobytes(), layout


def flash_image(linears, path, *, offset, lanes, pes, word_bits, mem_words=None,
                ternary_format="t2"):
    """Write :func:`model_image` to ``path`` (a .bin to program into the flash at byte
    ``offset``) and its description beside it (``path`` with suffix .json: the offset, the
    device shape, the format and ``layout``, what ``FabricBackend(preloaded=...)`` takes).
    Returns the description."""
    img, layout = model_image(linears, lanes=lanes, pes=pes, word_bits=word_bits,
                              mem_words=mem_words, ternary_format=ternary_format)
    path = Path(path)
    path.write_bytes(img)
    info = {"offset": offset, "bytes": len(img), "words": len(img) // (word_bits // 8),
            "lanes": lanes, "pes": pes, "word_bits": word_bits,
            "ternary_format": ternary_format, "layout": layout}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info
_LAYOUT_KEYS = {"lanes": int, "pes": int, "word_bits": int, "ternary_format": str,
                "layout": dict}


def read_flash_layout(path, config=None):
    """The description :func:`flash_image` wrote (``FILE.json``), checked.

    With ``config`` (the device's, :func:`lpu.hw.lpu.parse_config`), the image's shape must be
    the device's -- lanes, PEs, word width, a weight format it was built for -- or the weights
    in its memory would be read as another layout.

    Raises
    ------
    ValueError
        Unreadable or malformed file, or an image for another device shape; the message names
        the file and the field.
    """
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable weight layout ({exc})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: not a weight layout (a JSON object from lpu flash-image)")
    for key, kind in _LAYOUT_KEYS.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise ValueError(f"{path}: {key!r} missing or not {kind.__name__} (a weight layout "
                             f"from lpu flash-image)")
    bad = [k for k, v in info["layout"].items()
           if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise ValueError(f"{path}: layout address of {bad[0]} is not a word address")
    if config is not None:
        check_flash_layout(info, config, path)
    return info


def check_flash_layout(info, config, path):
    """Refuse the layout ``info`` (read from ``path``) unless the image's shape is that of the
    device of ``config``; see :func:`read_flash_layout`."""
    for key in ("lanes", "pes", "word_bits"):
        if info[key] != config[key]:
            raise ValueError(f"{path}: image for {key} {info[key]}, the device has "
                             f"{config[key]}")
    words = info.get("words")
    if isinstance(words, int) and words > config["mem_words"]:
        raise ValueError(f"{path}: image of {words} words, the device addresses "
                         f"{config['mem_words']}")
    names = [f.value for f in config["formats"]]
    if info["ternary_format"] not in names:
        raise ValueError(f"{path}: image in {info['ternary_format']}, the device reads "
                         f"{', '.join(names)}")


