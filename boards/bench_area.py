"""``lpu bench area``: LUT cost per lane of the PE-array variants on iCE40 and ECP5.

Synthesizes each configuration with :func:`lpu.boards.area.synthesize` (in parallel on the local
cores), prints a table and, with ``--record``, writes it to ``docs/area.md`` and
``docs/results/area.json`` together with the command that produced it.
"""

import json
import platform
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .area import synthesize

__all__ = ["DEFAULT_CONFIGS", "run_area_bench", "format_table"]

# The target is stated at N = 64, int8 activations, P >= 4; the other rows show the trend.
DEFAULT_CONFIGS = [
    dict(lanes=64, pes=4, act_bits=8, negation="carry", pipeline=1),
    dict(lanes=64, pes=4, act_bits=8, negation="shared", pipeline=1),
    dict(lanes=64, pes=4, act_bits=8, negation="local", pipeline=1),
    dict(lanes=64, pes=8, act_bits=8, negation="carry", pipeline=1),
    dict(lanes=64, pes=4, act_bits=8, negation="carry", pipeline=0),
    dict(lanes=64, pes=4, act_bits=8, negation="carry", pipeline=1, weights="binary"),
    dict(lanes=16, pes=4, act_bits=8, negation="carry", pipeline=1),
    dict(lanes=64, pes=4, act_bits=4, negation="carry", pipeline=1),
]


def _one(job):
    from lpu.hw.array import PEArray
    target, cfg = job
    cfg = {"weights": "ternary", "max_k": 4096, **cfg}
    r = synthesize(PEArray(**cfg), target=target)
    lanes = cfg["lanes"] * cfg["pes"]
    return {"target": target, **cfg, "luts": r["luts"], "ffs": r["ffs"],
            "lut4_cells": r["lut4_cells"], "carry_cells": r["carry_cells"],
            "luts_per_lane": round(r["luts"] / lanes, 2), "seconds": r["seconds"]}


def run_area_bench(configs=None, targets=("ice40", "ecp5"), jobs=2):
    jobs_list = [(t, c) for c in (configs or DEFAULT_CONFIGS) for t in targets]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_one, jobs_list))


# Weight decoders: LUT cost per byte of memory word decoded per cycle.
DECODER_CONFIGS = [
    dict(formats=["t5"], word_bits=8), dict(formats=["t5"], word_bits=32),
    dict(formats=["t2"], word_bits=32), dict(formats=["b1"], word_bits=32),
    dict(formats=["t2", "t5"], word_bits=8), dict(formats=["t2", "t5"], word_bits=32),
]


def _decoder(job):
    from lpu.hw.decoder import WeightDecoder
    target, cfg = job
    r = synthesize(WeightDecoder(**cfg), target=target)
    return {"target": target, "formats": "+".join(cfg["formats"]),
            "word_bits": cfg["word_bits"], "luts": r["luts"],
            "luts_per_byte": round(r["luts"] / (cfg["word_bits"] // 8), 2)}


def run_decoder_bench(targets=("ice40", "ecp5"), jobs=2):
    jobs_list = [(t, c) for c in DECODER_CONFIGS for t in targets]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_decoder, jobs_list))


def format_decoder_table(rows):
    lines = ["| target | formats | word bits | LUTs | LUTs per byte/cycle |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['formats']} | {r['word_bits']} | {r['luts']} "
                     f"| **{r['luts_per_byte']}** |")
    return "\n".join(lines)


def format_table(rows):
    """Markdown table: LUTs counts SB_LUT4 (iCE40) or LUT4 + 2 x CCU2C (ECP5)."""
    head = ("| target | N | P | B | weights | negation | pipeline | LUT4 cells | carry cells "
            "| LUTs | FFs | LUTs/lane |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        carry = f"{r['carry_cells']} {'CCU2C' if r['target'] == 'ecp5' else 'SB_CARRY'}"
        lines.append(f"| {r['target']} | {r['lanes']} | {r['pes']} | {r['act_bits']} "
                     f"| {r['weights']} | {r['negation']} | {r['pipeline']} | {r['lut4_cells']} "
                     f"| {carry} | {r['luts']} | {r['ffs']} | **{r['luts_per_lane']}** |")
    return "\n".join(lines)


def record(rows, command, root=".", name="area"):
    root = Path(root)
    (root / "docs" / "results").mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "machine": platform.machine(), "python": platform.python_version()}
    (root / "docs" / "results" / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return meta
