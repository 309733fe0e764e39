import numpy as np
import pytest
from conftest import env_int

from lpu.hw.array import accumulator_range
from lpu.hw.params import signed_width
from lpu.hw.scale import ScaleUnit, scale_address, scale_groups, scale_image, scale_words
from lpu.sim import golden, pysim

TOP = (1 << 15) - 1


def _job(rows, cols, group, vectors, scale_base):
    return {"base": 0, "rows": rows, "cols": cols, "group": group, "vectors": vectors,
            "fmt": 0, "scale_base": scale_base}


def _case(rng, unit, w, x, mant, group, scale_base, *, pad_sums=True):
    """A job for ``unit``: the array's group sums as beats, and the expected outputs."""
    pes = unit.pes
    rows, cols = w.shape
    v = x.shape[1]
    sums = golden.group_matvec(w, x, group)                  # (rows, G, V)
    groups = sums.shape[1]
    mb = -(-rows // pes)
    padded = np.zeros((mb * pes, groups, v), dtype=np.int64)
    padded[:rows] = sums
    if pad_sums:
        # Padding rows carry sums (binary pad weights are +1): the unit must not scale them in.
        padded[rows:] = rng.integers(-100, 100, size=padded[rows:].shape)
    beats = padded.reshape(mb, pes, groups, v).transpose(0, 2, 3, 1).reshape(-1, pes)
    want = np.zeros((mb * pes, v), dtype=np.int64)
    want[:rows] = golden.scaled_matvec(w, x, mant, group=group)
    want = want.reshape(mb, pes, v).transpose(0, 2, 1).reshape(-1, pes)
    image = scale_image(mant, pes)
    if pad_sums and rows % pes:
        # ... and mantissas (another job's, say, in the memory): the unit ignores both.
        image[-groups:, rows % pes:] = rng.integers(1, TOP, size=(groups, pes - rows % pes))
    return {"job": _job(rows, cols, group, v, scale_base),
            "scales": (scale_base, image), "beats": beats}, want


def _random(rng, rows, cols, v, act_bits=8):
    lo, hi = golden.act_range(act_bits)
    return rng.integers(-1, 2, size=(rows, cols)), rng.integers(lo, hi + 1, size=(cols, v))


@pytest.mark.parametrize("pes, max_k, vectors, shapes", [
    # (rows, cols, group, V): per-tensor (group 0) and per-group jobs, partial last groups
    (4, 64, 3, [(7, 40, 0, 3), (9, 64, 16, 2), (4, 19, 8, 1), (5, 64, 8, 3)]),
    (1, 32, 1, [(3, 32, 0, 1), (2, 32, 4, 1)]),
    (3, 48, 2, [(8, 48, 48, 2), (6, 48, 12, 2), (1, 5, 0, 1)]),
    (2, 2048, 2, [(3, 2048, 0, 2), (4, 1000, 256, 1)]),      # 20-bit sums: split in two
])
@pytest.mark.parametrize("split", [False, True])
def test_scale_unit_matches_golden(rng, pes, max_k, vectors, shapes, split):
    acc_w = signed_width(*accumulator_range(max_k, 8))
    unit = ScaleUnit(pes=pes, acc_width=acc_w, scale_depth=400, max_vectors=vectors,
                     split_product=split)
    for _ in range(env_int("LPU_REPEATS", 2)):
        jobs, wants = [], []
        for rows, cols, group, v in shapes:
            w, x = _random(rng, rows, cols, v)
            groups = scale_groups(cols, group)
            mant = rng.integers(-TOP - 1, TOP + 1, size=(rows, groups))
            mant[0, 0] = TOP
            base = int(rng.integers(0, 400 - rows * groups + 1))
            job, want = _case(rng, unit, w, x, mant, group, base)
            jobs.append(job)
            wants.append(want)
        got = pysim.run_scale(unit, jobs, seed=int(rng.integers(1 << 31)), valid_prob=0.6,
                              ready_prob=0.4)
        for res, want in zip(got, wants, strict=True):
            assert not res["error"]
            assert np.array_equal(res["outputs"], want)


@pytest.mark.parametrize("group", [0, 8, 32])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("max_k, split", [(64, False), (2048, True)])
def test_scale_unit_extremes(rng, group, sign, max_k, split):
    """The largest legal sums times the largest mantissas (both signs): no overflow."""
    pes, v = 2, 2
    acc_w = signed_width(*accumulator_range(max_k, 8))
    unit = ScaleUnit(pes=pes, acc_width=acc_w, scale_depth=1024, max_vectors=v,
                     split_product=split)
    w = np.full((3, max_k), sign)
    w[1] = -sign
    x = np.full((max_k, v), -128)
    groups = scale_groups(max_k, group)
    mant = np.full((3, groups), -TOP - 1)
    mant[1] = TOP
    mant[2, ::2] = TOP
    job, want = _case(rng, unit, w, x, mant, group, 5)
    assert np.abs(want).max() == 128 * max_k * (TOP + 1)
    assert np.abs(want).max() < 1 << (unit.out_width - 1)
    got, = pysim.run_scale(unit, [job], seed=int(rng.integers(1 << 31)), valid_prob=0.8,
                           ready_prob=0.3)
    assert np.array_equal(got["outputs"], want)


@pytest.mark.parametrize("pes, v, split", [(4, 1, False), (4, 2, False), (4, 3, False),
                                           (1, 1, False), (3, 2, False), (4, 1, True),
                                           (3, 2, True)])
def test_scale_unit_throughput(rng, pes, v, split):
    """Groups of one tile: beats back to back, those of one vector V beats apart (V = 1: the
    next beat reads the running sums the one ahead writes in the same cycle)."""
    unit = ScaleUnit(pes=pes, acc_width=20 if split else 16, scale_depth=128, max_vectors=v,
                     split_product=split)
    w, x = _random(rng, 10, 64, v)
    mant = rng.integers(-TOP - 1, TOP + 1, size=(10, 8))
    job, want = _case(rng, unit, w, x, mant, 8, 3)
    got, = pysim.run_scale(unit, [job])
    assert not got["error"]
    assert np.array_equal(got["outputs"], want)
    beats = len(job["beats"])
    assert got["setup"] == unit.setup_cycles
    # one beat every cycle, then the last result leaves
    assert unit.cycles_per_beat == 1
    assert got["cycles"] == unit.setup_cycles + beats + unit.latency
    # and exact under random gaps and backpressure
    got, = pysim.run_scale(unit, [job, job], seed=int(rng.integers(1 << 31)), valid_prob=0.7,
                           ready_prob=0.5)[1:]
    assert np.array_equal(got["outputs"], want)


def test_scale_unit_refuses_a_range_past_the_memory(rng):
    unit = ScaleUnit(pes=2, acc_width=16, scale_depth=100, max_vectors=2)
    w, x = _random(rng, 5, 40, 2)
    mant = np.ones((5, 5), dtype=np.int64)
    assert scale_words(5, 5, 2) == 15                           # 3 row blocks of 5 groups
    good, want = _case(rng, unit, w, x, mant, 8, 85)             # 85 + 15 = 100: fits
    bad = {"job": _job(5, 40, 8, 2, 86), "beats": good["beats"]}  # 86 + 15 = 101
    per_tensor = {"job": _job(201, 40, 0, 1, 0), "beats": []}     # 101 blocks of 1
    aborted = {**good, "abort_after": 3}
    got = pysim.run_scale(unit, [bad, good, per_tensor, aborted, good],
                          seed=int(rng.integers(1 << 31)), ready_prob=0.5)
    assert [r["error"] for r in got] == [True, False, True, False, False]
    assert got[0]["outputs"].size == 0 and got[2]["outputs"].size == 0
    assert np.array_equal(got[1]["outputs"], want)
    assert np.array_equal(got[4]["outputs"], want)     # an abort leaves nothing behind


@pytest.mark.parametrize("abort_after", [3, 7, 14])
def test_scale_unit_one_vector_abort_leaves_no_sums(rng, abort_after):
    """One vector: the running sums are a register the last group clears; an abort in the
    middle of a row block (after 3 or 14 beats: partial sums; after 7: one block out) must not
    leave its partial sums to the next job."""
    unit = ScaleUnit(pes=2, acc_width=16, scale_depth=64, max_vectors=1)
    w, x = _random(rng, 5, 40, 1)
    mant = rng.integers(-TOP - 1, TOP + 1, size=(5, 5))
    good, want = _case(rng, unit, w, x, mant, 8, 10)              # 3 row blocks of 5 groups
    got = pysim.run_scale(unit, [{**good, "abort_after": abort_after}, good],
                          seed=int(rng.integers(1 << 31)), valid_prob=0.7, ready_prob=0.5)
    assert [r["error"] for r in got] == [False, False]
    assert np.array_equal(got[1]["outputs"], want)


def test_scale_unit_refuses_with_a_divided_row_count(rng):
    """P not a power of two: ceil(rows / P) comes from a second divider, in the same time."""
    unit = ScaleUnit(pes=3, acc_width=16, scale_depth=12, max_vectors=1)
    w, x = _random(rng, 7, 16, 1)
    mant = rng.integers(-TOP - 1, TOP + 1, size=(7, 4))
    good, want = _case(rng, unit, w, x, mant, 4, 0)              # 3 blocks x 4 groups = 12
    bad = {"job": _job(7, 16, 4, 1, 1), "beats": good["beats"]}
    got = pysim.run_scale(unit, [bad, good])
    assert [r["error"] for r in got] == [True, False]
    assert got[1]["setup"] == unit.setup_cycles
    assert np.array_equal(got[1]["outputs"], want)


def test_scale_layout_is_words_of_p():
    assert scale_address(10, 2, 1, 3) == 10 + 2 * 3 + 1
    assert scale_groups(19, 8) == 3 and scale_groups(19, 0) == 1
    assert scale_words(5, 3, 2) == 9 and scale_words(4, 3, 2) == 6
    m = np.arange(15).reshape(5, 3) - 7
    img = scale_image(m, 2)
    assert img.shape == (9, 2)
    # word block * groups + g holds rows 2 * block, 2 * block + 1 of group g; padding is zero
    assert img.tolist() == [[-7, -4], [-6, -3], [-5, -2], [-1, 2], [0, 3], [1, 4],
                            [5, 0], [6, 0], [7, 0]]
    assert scale_image(m, 1).reshape(-1).tolist() == m.reshape(-1).tolist()


@pytest.mark.parametrize("mant, msg", [
    (np.zeros(3, dtype=np.int64), r"^Scale mantissas must be a 2-D integer array \(rows x "
                                  r"groups\), not int64 \(3,\)$"),
    (np.array([[1 << 15]]), r"^Scale mantissas must be in \[-32768, 32767\]$"),
    (np.ones((2, 2)), r"^Scale mantissas must be a 2-D integer array \(rows x groups\), not "
                      r"float64 \(2, 2\)$"),
])
def test_scale_image_errors(mant, msg):
    with pytest.raises(ValueError, match=msg):
        scale_image(mant, 2)


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"pes": 0}, ValueError, r"^PE count must be a positive integer, not 0$"),
    ({"scale_depth": 65537}, ValueError, r"^Scale memory depth must be an integer from 1 to "
                                         r"65536, not 65537$"),
    ({"max_vectors": 256}, ValueError, r"^Maximum vector count must be an integer from 1 to "
                                       r"255, not 256$"),
    ({"acc_width": 1.5}, TypeError, r"^Accumulator width must be an integer from 2 to 48, not "
                                    r"1\.5$"),
    ({"split_product": 0}, TypeError, r"^Split product must be a bool, not 0$"),
])
def test_scale_unit_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        ScaleUnit(**{"pes": 2, "acc_width": 16, **kwargs})
