import numpy as np
import pytest
from conftest import env_int

from lpu.boards.area import TargetFamily
from lpu.hw.array import PEArray
from lpu.sim import golden, pysim


class _OnFPGA(PEArray):
    """The array as elaborated for an FPGA, with generic adders (the iCE40's and ECP5's cells
    are proved equal to them in tests/test_fpga_cells.py): its tree registers advance on the
    array's enable alone, not only when a tile enters, and its accumulators are cleared ahead
    of a new row block."""

    def elaborate(self, platform):
        return super().elaborate(TargetFamily("iCE40", cells=False))


class _OnECP5(PEArray):
    """As :class:`_OnFPGA`, but the ECP5's design: accumulators restart through a multiplexer
    (which its CCU2C adders fold in)."""

    def elaborate(self, platform):
        return super().elaborate(TargetFamily("ecp5", cells=False))


def _matrix(rng, rows, cols, act_bits, mode):
    lo, hi = golden.act_range(act_bits)
    values = [-1, 1] if mode == "binary" else [-1, 0, 1]
    w = rng.choice(values, size=(rows, cols))
    x = rng.integers(lo, hi + 1, size=cols)
    x[: max(1, cols // 8)] = lo
    return w, x


@pytest.mark.parametrize("lanes, pes, act_bits, mode, pipeline, negation, rows, cols", [
    (3, 2, 8, "ternary", 1, "carry", 7, 20),
    (8, 4, 8, "ternary", 2, "carry", 9, 30),
    (4, 3, 4, "binary", 0, "carry", 5, 3),       # K smaller than N
    (5, 1, 8, "binary", 1, "shared", 4, 11),
    (6, 2, 6, "ternary", 1, "local", 3, 13),
    (1, 1, 8, "ternary", 1, "carry", 2, 5),
])
@pytest.mark.parametrize("cls", [PEArray, _OnFPGA, _OnECP5])
@pytest.mark.parametrize("input_register", [False, True])
def test_array_matvec(rng, cls, lanes, pes, act_bits, mode, pipeline, negation, rows, cols,
                      input_register):
    arr = cls(lanes=lanes, pes=pes, act_bits=act_bits, weights=mode, pipeline=pipeline,
              max_k=max(cols, lanes), negation=negation, input_register=input_register)
    for _ in range(env_int("LPU_REPEATS", 2)):
        w, x = _matrix(rng, rows, cols, act_bits, mode)
        tiles = golden.tile_matvec(w, x, lanes=lanes, pes=pes, mode=mode)
        out, _ = pysim.run_array(arr, tiles, seed=int(rng.integers(1 << 31)),
                                 valid_prob=0.7, ready_prob=0.5)
        ref = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"],
                                   tiles["last"], act_bits=act_bits, mode=mode)
        assert np.array_equal(out, ref)
        assert np.array_equal(out.reshape(-1)[:rows],
                              golden.matvec(w, x, act_bits=act_bits, mode=mode))


def test_array_accumulator_holds_worst_case():
    # every column at -2^(B-1) times -1: the largest sum max_k allows, no overflow
    lanes, pes, max_k = 4, 2, 12
    arr = PEArray(lanes=lanes, pes=pes, act_bits=8, pipeline=1, max_k=max_k)
    assert arr.acc_width == 12          # [-1536, 1536] in 12 signed bits
    w = np.array([[-1] * max_k, [1] * max_k])
    x = np.full(max_k, -128)
    tiles = golden.tile_matvec(w, x, lanes=lanes, pes=pes)
    out, _ = pysim.run_array(arr, tiles)
    assert out.tolist() == [[1536, -1536]]


@pytest.mark.parametrize("input_register", [False, True])
def test_array_full_throughput(rng, input_register):
    arr = PEArray(lanes=4, pes=2, pipeline=1, max_k=64, input_register=input_register)
    w, x = _matrix(rng, 8, 16, 8, "ternary")
    tiles = golden.tile_matvec(w, x, lanes=4, pes=2)
    out, cycles = pysim.run_array(arr, tiles)
    assert np.array_equal(out.reshape(-1), golden.matvec(w, x))
    # 16 tiles at one per cycle; the last output leaves latency cycles after the last tile
    assert cycles == len(tiles["act"]) + arr.latency


def test_row_block_without_first_restarts_after_last():
    # a tile following a last tile starts a new row block even without first
    arr = PEArray(lanes=2, pes=1, pipeline=0, max_k=4)
    act = np.array([[1, 2], [3, 4], [5, 6]])
    weight = np.array([[[1, 1]], [[1, 1]], [[1, -1]]])
    first = np.array([True, False, False])
    last = np.array([True, False, True])
    tiles = {"act": act, "weight": weight, "first": first, "last": last}
    out, _ = pysim.run_array(arr, tiles)
    assert out.tolist() == [[3], [7 - 1]]
    assert np.array_equal(out, golden.array_outputs(act, weight, first, last))


@pytest.mark.parametrize("vectors, pipeline", [(1, 1), (2, 1), (3, 2), (2, 0)])
@pytest.mark.parametrize("cls", [PEArray, _OnFPGA, _OnECP5])
def test_array_restarts_at_any_first(rng, cls, vectors, pipeline):
    # first and last tiles at random, each vector's sums on their own: a first tile restarts a
    # sum whatever came before it, and so does the tile after a last one
    lanes, pes, n = 3, 2, 60
    arr = cls(lanes=lanes, pes=pes, pipeline=pipeline, max_k=lanes * n, vectors=vectors)
    tiles = {"act": rng.integers(-128, 128, size=(n, lanes)),
             "weight": rng.integers(-1, 2, size=(n, pes, lanes)),
             "first": rng.random(n) < 0.3, "last": rng.random(n) < 0.3,
             "vector": rng.integers(0, vectors, size=n)}
    out, _ = pysim.run_array(arr, tiles, seed=int(rng.integers(1 << 31)),
                             valid_prob=0.8, ready_prob=0.6)
    assert np.array_equal(out, golden.array_outputs(tiles["act"], tiles["weight"],
                                                    tiles["first"], tiles["last"],
                                                    tiles["vector"]))


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"lanes": 4, "pes": 0}, ValueError, r"^PE count must be a positive integer, not 0$"),
    ({"lanes": 4, "pes": "4"}, TypeError, r"^PE count must be a positive integer, not '4'$"),
    ({"lanes": 4, "pes": 2, "max_k": 0}, ValueError,
     r"^Maximum row length must be a positive integer, not 0$"),
    ({"lanes": 16, "pes": 2, "max_k": 8}, ValueError,
     r"^Maximum row length \(8\) must be at least the lane count \(16\)$"),
    ({"lanes": -3, "pes": 2}, ValueError, r"^Lane count must be a positive integer, not -3$"),
    ({"lanes": 4, "pes": 2, "input_register": 1}, TypeError,
     r"^Input register must be a bool, not 1$"),
])
def test_array_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        PEArray(**kwargs)


@pytest.mark.parametrize("vectors, group, pipeline, input_register", [
    (3, None, 1, False), (2, 8, 0, False), (4, 4, 2, False), (3, 8, 1, True),
    (2, None, 0, True)])
@pytest.mark.parametrize("cls", [PEArray, _OnFPGA, _OnECP5])
def test_array_matrix_matrix_and_groups(rng, cls, vectors, group, pipeline, input_register):
    lanes, pes, rows, cols = 4, 2, 5, 14
    arr = cls(lanes=lanes, pes=pes, pipeline=pipeline, max_k=16, vectors=vectors,
              input_register=input_register)
    w, _ = _matrix(rng, rows, cols, 8, "ternary")
    x = rng.integers(-128, 128, size=(cols, vectors))
    tiles = golden.tile_matvec(w, x, lanes=lanes, pes=pes, group=group)
    out, _ = pysim.run_array(arr, tiles, seed=int(rng.integers(1 << 31)),
                             valid_prob=0.8, ready_prob=0.6)
    ref = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"], tiles["last"],
                               tiles["vector"])
    assert np.array_equal(out, ref)
    # outputs leave per row block, per group, per vector
    g = group or 16
    groups = -(-cols // g)
    got = out.reshape(-1, groups, vectors, pes).transpose(0, 3, 1, 2).reshape(-1, groups,
                                                                               vectors)[:rows]
    wp = np.zeros((rows, groups * g), dtype=np.int64)
    wp[:, :cols] = w
    xp = np.zeros((groups * g, vectors), dtype=np.int64)
    xp[:cols] = x
    expect = np.einsum("mgk,gkv->mgv", wp.reshape(rows, groups, g), xp.reshape(groups, g, vectors))
    assert np.array_equal(got, expect)
