"""``lpu program``: load a board's bitstream with openFPGALoader or iceprog.

Which programmer takes which board, and how (sources: openFPGALoader's board list,
``doc/boards.yml``, and its Lattice notes; the ``iceprog`` manual page of Debian's
``fpga-icestorm``):

- ULX3S: ``openFPGALoader -b ulx3s``. It loads the ECP5's configuration SRAM by default (``-m``)
  and writes the SPI flash with ``-f``. iceprog programs iCE40 boards only.
- Tang Nano 9K: ``openFPGALoader -b tangnano9k``, the GW1NR-9's SRAM with ``-m`` (its default)
  or the internal flash with ``-f``.
- iCEBreaker: openFPGALoader knows it as ``ice40_generic`` and writes only its SPI flash (the
  board list says memory "NA", flash "AS"). ``iceprog`` writes the flash by default; ``iceprog
  -S`` loads the SRAM, which the iCEBreaker allows only with its flash jumpers changed.

A programmer is looked up as Amaranth looks up tools: the environment variable named after it
(``OPENFPGALOADER``, ``ICEPROG``), else the PATH.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lpu.hw.params import check_choice

from .build import bitstream_name, default_build_dir
from .top import board_spec

__all__ = ["ProgramError", "Programmer", "OPENFPGALOADER_BOARDS", "PROGRAMMERS", "DEFAULT_MODE",
           "WEIGHTS_COMMANDS", "weights_command", "bitstream_path", "find_programmer",
           "program_command", "program_board"]


class ProgramError(RuntimeError):
    """No programmer, no bitstream, or the programmer failed; the message says what to do."""


@dataclass(frozen=True)
class Programmer:
    """A programming tool and the arguments it takes for one board, per mode."""

    #: Executable name (also, upper-cased, the environment variable that overrides it).
    tool: str
    #: Debian package that installs it.
    package: str
    #: ``{"sram"|"flash": [arguments before the bitstream]}``; a mode missing is not supported.
    modes: dict


#: Each board's name in openFPGALoader's board list (``-b``).
OPENFPGALOADER_BOARDS = {"icebreaker": "ice40_generic", "ulx3s-85f": "ulx3s",
                         "tang-nano-9k": "tangnano9k"}
_B = {board: ["-b", name] for board, name in OPENFPGALOADER_BOARDS.items()}

#: Programmers per board, in order of preference.
PROGRAMMERS = {
    "icebreaker": (
        Programmer("openFPGALoader", "openfpgaloader", {"flash": _B["icebreaker"]}),
        Programmer("iceprog", "fpga-icestorm", {"flash": [], "sram": ["-S"]}),
    ),
    "ulx3s-85f": (
        Programmer("openFPGALoader", "openfpgaloader",
                   {"sram": [*_B["ulx3s-85f"], "-m"], "flash": [*_B["ulx3s-85f"], "-f"]}),
    ),
    "tang-nano-9k": (
        Programmer("openFPGALoader", "openfpgaloader",
                   {"sram": [*_B["tang-nano-9k"], "-m"], "flash": [*_B["tang-nano-9k"], "-f"]}),
    ),
}

#: How a weight image (``lpu flash-image``) is written to each board's flash at a byte offset:
#: ``(tool, arguments before the file)``, ``{offset}`` and ``{kib}`` filled in. The iCE40 and
#: ECP5 boards' flash holds the bitstream too (the weights go past it); the Tang Nano 9K's is
#: the SPI flash on the GW1NR-9's MSPI pins, which openFPGALoader writes over JTAG with
#: ``--external-flash`` (its Gowin notes).
WEIGHTS_COMMANDS = {
    "icebreaker": ("iceprog", ["-o", "{kib}k"]),
    "ulx3s-85f": ("openFPGALoader", [*_B["ulx3s-85f"], "-f", "-o", "{offset:#x}"]),
    "tang-nano-9k": ("openFPGALoader", [*_B["tang-nano-9k"], "--external-flash", "-o",
                                        "{offset:#x}"]),
}


def weights_command(board, path, offset):
    """The command line (a list) that writes the weight image ``path`` to ``board``'s flash at
    byte ``offset`` (a multiple of 1024)."""
    board_spec(board)
    if offset % 1024:
        raise ValueError(f"Flash offset must be a multiple of 1024, not {offset}")
    tool, args = WEIGHTS_COMMANDS[board]
    return [tool, *(a.format(offset=offset, kib=offset // 1024) for a in args), str(path)]


#: What ``lpu program`` does without ``--flash``/``--sram``: each tool's own default (the
#: iCEBreaker boots from its flash; the ULX3S and Tang Nano 9K are loaded into SRAM, as
#: openFPGALoader does).
DEFAULT_MODE = {"icebreaker": "flash", "ulx3s-85f": "sram", "tang-nano-9k": "sram"}

_MODES = ("sram", "flash")


def bitstream_path(board, bitstream=None):
    """The bitstream to load: ``bitstream`` if given, else the last ``lpu build``'s.

    Raises
    ------
    ProgramError
        The file does not exist; the message names the ``lpu build`` command that makes it.
    """
    spec = board_spec(board)
    if bitstream is not None:
        path = Path(bitstream)
        if not path.is_file():
            raise ProgramError(f"Bitstream {path} does not exist")
        return path
    out = default_build_dir(board)
    path = out / bitstream_name(spec.family)
    if not path.is_file():
        raise ProgramError(f"No bitstream at {path}: build it with "
                           f"`lpu build --board {board} -o {out}`, or give --bitstream PATH")
    return path


def _locate(tool):
    env = os.environ.get(tool.upper())
    if env:
        return env
    return shutil.which(tool)


def find_programmer(board, mode=None):
    """The first programmer of ``board`` on this machine that supports ``mode``.

    Returns
    -------
    (Programmer, str)
        The programmer and the command that runs it.

    Raises
    ------
    ValueError
        Unknown board or mode.
    ProgramError
        None is installed; the message names the Debian packages to install.
    """
    board_spec(board)
    mode = check_choice("Programming mode", DEFAULT_MODE[board] if mode is None else mode,
                        _MODES)
    able = [p for p in PROGRAMMERS[board] if mode in p.modes]
    for p in able:
        cmd = _locate(p.tool)
        if cmd:
            return p, cmd
    others = [p for p in PROGRAMMERS[board] if p not in able and _locate(p.tool)]
    hint = "".join(f"; {p.tool} is installed but cannot load the {mode} of {board}"
                   for p in others)
    wants = " or ".join(f"{p.tool} (Debian package {p.package}: sudo apt-get install "
                        f"{p.package})" for p in able)
    raise ProgramError(f"No programmer for {board} ({mode}) found on the PATH: install "
                       f"{wants}{hint}")


def program_command(board, bitstream, mode=None):
    """The command line that loads ``bitstream`` onto ``board`` (a list)."""
    mode = DEFAULT_MODE[board_spec(board).name] if mode is None else mode
    p, cmd = find_programmer(board, mode)
    return [cmd, *p.modes[mode], str(bitstream)]


def program_board(board, *, bitstream=None, mode=None):
    """Load a bitstream onto ``board``; returns the command line that was run.

    Raises
    ------
    ValueError
        Unknown board or mode.
    ProgramError
        No bitstream, no programmer, or the programmer failed.
    """
    board_spec(board)
    path = bitstream_path(board, bitstream)
    argv = program_command(board, path, mode)
    proc = subprocess.run(argv)
    if proc.returncode != 0:
        raise ProgramError(f"{Path(argv[0]).name} exited with status {proc.returncode}")
    return argv
