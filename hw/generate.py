"""Export generated components to Verilog with a manifest of their parameters and ports."""

import json
import os
import re
import tempfile
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import wiring

from .array import PEArray
from .pe import TernaryPE

__all__ = ["build_array", "build_pe", "port_list", "manifest", "write_design"]


def build_array(*, lanes, pes, act_bits=8, weights="ternary", pipeline=1, max_k=4096,
                negation="carry"):
    """A :class:`PEArray` from generator parameters (validated by the component)."""
    return PEArray(lanes=lanes, pes=pes, act_bits=act_bits, weights=weights, pipeline=pipeline,
                   max_k=max_k, negation=negation)


def build_pe(*, lanes, act_bits=8, weights="ternary", pipeline=1, negation="carry"):
    """A :class:`TernaryPE` from generator parameters."""
    return TernaryPE(lanes=lanes, act_bits=act_bits, weights=weights, pipeline=pipeline,
                     negation=negation)


def port_list(component, *, clocked=True):
    """Top-level Verilog ports of ``component`` as exported: name, direction and width.

    ``clocked``: whether the design has a clock domain (a combinational PE has no clk, rst).
    """
    ports = ([{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
             if clocked else [])
    for path, member, _ in component.signature.flatten(component):
        name = "__".join(str(p) for p in path)
        ports.append({"name": name, "dir": "in" if member.flow == wiring.In else "out",
                      "width": Shape.cast(member.shape).width})
    return ports


def manifest(component, *, top, clocked=True):
    """JSON-able description of a generated ``PEArray`` or ``TernaryPE``."""
    params = {"lanes": component.lanes, "act_bits": component.act_bits,
              "weights": component.mode.value, "pipeline": component.pipeline,
              "negation": component.negation}
    info = {"top": top, "kind": type(component).__name__, "parameters": params,
            "latency": component.latency, "ports": port_list(component, clocked=clocked)}
    if isinstance(component, PEArray):
        params["pes"] = component.pes
        params["max_k"] = component.max_k
        info["acc_width"] = component.acc_width
    else:
        info["output_width"] = component.output_width
    return info


def write_design(component, out_dir, *, top="lpu_array"):
    """Write ``<top>.v`` and ``manifest.json`` into ``out_dir``.

    Both files are produced in memory and moved into place only when complete, so a failure
    leaves no partial output.
    """
    text = verilog.convert(component, name=top)
    clocked = re.search(r"^\s*input clk;", text, re.MULTILINE) is not None
    info = manifest(component, top=top, clocked=clocked)
    info["verilog"] = f"{top}.v"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, body in ((f"{top}.v", text), ("manifest.json", json.dumps(info, indent=2) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)
    return info
