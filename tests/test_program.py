import re
import stat

import pytest

from lpu.boards.program import DEFAULT_MODE, PROGRAMMERS
from lpu.boards.top import BOARDS
from lpu.cli import main


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """A PATH holding only fake programmers; each records its argv, one word per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.txt"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_PROGRAMMER_LOG", str(log))
    for var in ("OPENFPGALOADER", "ICEPROG"):
        monkeypatch.delenv(var, raising=False)

    def install(name, status=0):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "$FAKE_PROGRAMMER_LOG"\n'
                          f"exit {status}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return script

    def argv():
        return log.read_text().splitlines() if log.exists() else None

    install.argv = argv
    return install


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    """$LPU_BUILD_DIR with the bitstreams `lpu build` would leave for both boards."""
    root = tmp_path / "build"
    monkeypatch.setenv("LPU_BUILD_DIR", str(root))
    paths = {}
    for board, name in (("icebreaker", "top.bin"), ("ulx3s-85f", "top.bit"),
                        ("tang-nano-9k", "top.fs")):
        (root / board).mkdir(parents=True)
        paths[board] = root / board / name
        paths[board].write_bytes(b"\xff\x00bitstream")
    return paths


def test_every_board_has_programmers_for_both_modes():
    assert set(PROGRAMMERS) == set(BOARDS) == set(DEFAULT_MODE)
    for board, progs in PROGRAMMERS.items():
        assert {m for p in progs for m in p.modes} == {"sram", "flash"}, board


@pytest.mark.parametrize("flag, args", [
    ([], ["-b", "ulx3s", "-m"]),
    (["--sram"], ["-b", "ulx3s", "-m"]),
    (["--flash"], ["-b", "ulx3s", "-f"]),
])
def test_program_ulx3s_runs_openfpgaloader(tools, build_dir, capsys, flag, args):
    fake = tools("openFPGALoader")
    tools("iceprog")                       # an iCE40 tool; never used for the ECP5
    assert main(["program", "--board", "ulx3s-85f", *flag]) == 0
    expected = [str(fake), *args, str(build_dir["ulx3s-85f"])]
    assert tools.argv() == expected
    assert capsys.readouterr().out == f"programmed: {' '.join(expected)}\n"


@pytest.mark.parametrize("flag, args", [
    ([], ["-b", "tangnano9k", "-m"]),
    (["--flash"], ["-b", "tangnano9k", "-f"]),
])
def test_program_tang_nano_runs_openfpgaloader(tools, build_dir, flag, args):
    fake = tools("openFPGALoader")
    assert main(["program", "--board", "tang-nano-9k", *flag]) == 0
    assert tools.argv() == [str(fake), *args, str(build_dir["tang-nano-9k"])]


@pytest.mark.parametrize("installed, flag, tool, args", [
    (["openFPGALoader", "iceprog"], [], "openFPGALoader", ["-b", "ice40_generic"]),
    (["openFPGALoader", "iceprog"], ["--flash"], "openFPGALoader", ["-b", "ice40_generic"]),
    (["openFPGALoader", "iceprog"], ["--sram"], "iceprog", ["-S"]),
    (["iceprog"], [], "iceprog", []),
    (["iceprog"], ["--sram"], "iceprog", ["-S"]),
])
def test_program_icebreaker_picks_a_programmer(tools, build_dir, installed, flag, tool, args):
    fakes = {name: tools(name) for name in installed}
    assert main(["program", "--board", "icebreaker", *flag]) == 0
    assert tools.argv() == [str(fakes[tool]), *args, str(build_dir["icebreaker"])]


def test_program_takes_a_given_bitstream_and_the_environment_variable(tools, tmp_path,
                                                                      monkeypatch):
    other = tmp_path / "elsewhere" / "loader"
    other.parent.mkdir()
    tools("openFPGALoader").rename(other)
    monkeypatch.setenv("OPENFPGALOADER", str(other))
    bit = tmp_path / "mine.bit"
    bit.write_bytes(b"x")
    assert main(["program", "--board", "ulx3s-85f", "--bitstream", str(bit), "--flash"]) == 0
    assert tools.argv() == [str(other), "-b", "ulx3s", "-f", str(bit)]


@pytest.mark.parametrize("board, flag, msg", [
    ("ulx3s-85f", [], "No programmer for ulx3s-85f (sram) found on the PATH: install "
                      "openFPGALoader (Debian package openfpgaloader: sudo apt-get install "
                      "openfpgaloader)"),
    ("icebreaker", [], "No programmer for icebreaker (flash) found on the PATH: install "
                       "openFPGALoader (Debian package openfpgaloader: sudo apt-get install "
                       "openfpgaloader) or iceprog (Debian package fpga-icestorm: sudo apt-get "
                       "install fpga-icestorm)"),
])
def test_program_without_a_programmer_says_what_to_install(tools, build_dir, capsys, board,
                                                           flag, msg):
    assert main(["program", "--board", board, *flag]) == 1
    assert capsys.readouterr().err == f"lpu: error: {msg}\n"


def test_program_icebreaker_sram_needs_iceprog(tools, build_dir, capsys):
    tools("openFPGALoader")
    assert main(["program", "--board", "icebreaker", "--sram"]) == 1
    assert capsys.readouterr().err == (
        "lpu: error: No programmer for icebreaker (sram) found on the PATH: install iceprog "
        "(Debian package fpga-icestorm: sudo apt-get install fpga-icestorm); openFPGALoader is "
        "installed but cannot load the sram of icebreaker\n")
    assert tools.argv() is None


@pytest.mark.parametrize("board, name", [("icebreaker", "top.bin"), ("ulx3s-85f", "top.bit")])
def test_program_without_a_bitstream_names_the_build_command(tools, tmp_path, monkeypatch,
                                                             capsys, board, name):
    tools("openFPGALoader")
    monkeypatch.setenv("LPU_BUILD_DIR", str(tmp_path / "nothing"))
    assert main(["program", "--board", board]) == 1
    out = tmp_path / "nothing" / board
    assert capsys.readouterr().err == (
        f"lpu: error: No bitstream at {out / name}: build it with `lpu build --board {board} "
        f"-o {out}`, or give --bitstream PATH\n")
    assert tools.argv() is None


def test_program_default_build_dir_without_the_variable(tools, tmp_path, monkeypatch, capsys):
    tools("openFPGALoader")
    monkeypatch.delenv("LPU_BUILD_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["program", "--board", "ulx3s-85f"]) == 1
    assert capsys.readouterr().err == (
        "lpu: error: No bitstream at build/ulx3s-85f/top.bit: build it with `lpu build --board "
        "ulx3s-85f -o build/ulx3s-85f`, or give --bitstream PATH\n")


def test_program_missing_given_bitstream(tools, tmp_path, capsys):
    tools("openFPGALoader")
    missing = tmp_path / "no.bit"
    assert main(["program", "--board", "ulx3s-85f", "--bitstream", str(missing)]) == 1
    assert capsys.readouterr().err == f"lpu: error: Bitstream {missing} does not exist\n"


def test_program_reports_a_failing_programmer(tools, build_dir, capsys):
    tools("openFPGALoader", status=3)
    assert main(["program", "--board", "ulx3s-85f"]) == 1
    assert capsys.readouterr().err == "lpu: error: openFPGALoader exited with status 3\n"


def test_program_rejects_an_unknown_board_and_both_modes(capsys):
    assert main(["program", "--board", "nexys"]) == 2
    assert capsys.readouterr().err == ("lpu: error: Board must be one of icebreaker, "
                                       "ulx3s-85f, tang-nano-9k, not 'nexys'\n")
    with pytest.raises(SystemExit):
        main(["program", "--board", "icebreaker", "--flash", "--sram"])
    assert re.search(r"argument --sram: not allowed with argument --flash",
                     capsys.readouterr().err)


def test_find_programmer_rejects_an_unknown_mode():
    from lpu.boards.program import find_programmer
    with pytest.raises(ValueError, match=r"^Programming mode must be 'sram' or 'flash', "
                                         r"not 'jtag'$"):
        find_programmer("icebreaker", "jtag")
