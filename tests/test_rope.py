"""cuda/rope.cu against pydsv4.reference (SPEC 5): the cos/sin table (ops.rope_cos_sin), the q path
(ops.rope_tail(ops.q_head_norm(q))), the kv path into FP8 KV-cache rows
(ops.kv_fp8_nope(ops.rope_tail(ops.rms_norm(kv)))) and the inverse rope of the attention output.

Tolerances, from the formats:
  - The table is cos/sin of the fp32 angle evaluated in double and rounded once: equal to NumPy's fp32 cos/sin
    (correctly rounded on the CPUs seen) except where a double rounding lands on the other side of an fp32 tie:
    one fp32 ulp at < 1e-5 of the entries.
  - Rotations use the table's values and NumPy's operation order (each product and sum rounded to fp32): with
    the same cos/sin they are bit-exact (the inverse-rope test, and the q/kv tests on integer-valued rows whose
    sum of squares is exact in any order).
  - On general rows the norms sum x^2 in another order than NumPy (1/rms can move by an fp32 ulp): a normed
    bf16 value then differs by one bf16 ulp at < 0.1% of the elements. Through the rotation such a flip moves
    an output by at most 2^-7 (|re| + |im|) of its pair plus its own rounding (2^-7 |out|); through FP8 by one
    e4m3 step (2^-3 relative, 2^-9 * scale among subnormals).
"""

import ctypes
import re

import ml_dtypes
import numpy as np
import pytest
from compare import assert_bit_exact

from pydsv4.cuda import DeviceArray, DSV4Error, bindings, lib, runtime
from pydsv4.cuda.families import rope
from pydsv4.cuda.families.rope import KvParams
from pydsv4.reference import ops, quant

gpu = pytest.mark.gpu("rope")

BF16 = ml_dtypes.bfloat16
EPS = 1e-6
D, R, N = 512, 64, 448
HEADS = [64, 128]  # V4-Flash, V4-Pro n_heads
TOKENS = [1, 13, 127, 2048]
RARE = 1e-3
TABLE_POSITIONS = 1 << 17  # beyond 105615: angles > 1e5 rad take sincos' slow argument reduction
PLAIN_FREQS = ops.rope_freqs(R, 10000)
YARN_FREQS = ops.rope_freqs(R, 160000, 65536, 16, 32, 1)


# ---- helpers ----------------------------------------------------------------------------------------------------


def build_table(freqs, n_positions, stream=None) -> DeviceArray:
    table = DeviceArray.empty((n_positions, len(freqs), 2), np.float32).fill_poison(stream)
    freqs_dev = DeviceArray.from_numpy(freqs, stream)
    lib.dsv4_rope_table_f32(table, freqs_dev, n_positions, len(freqs), stream)
    runtime.stream_synchronize(stream)  # before freqs_dev is freed
    return table


@pytest.fixture(scope="module")
def table():
    """The YaRN table of TABLE_POSITIONS positions on the device, and its host copy."""
    dev = build_table(YARN_FREQS, TABLE_POSITIONS)
    return dev, dev.to_numpy()


def cos_sin(table_host, positions):
    rows = table_host[np.asarray(positions)]
    return rows[..., 0], rows[..., 1]


def random_positions(rng, n):
    pos = rng.integers(0, TABLE_POSITIONS, n).astype(np.int32)
    pos[: min(n, 2)] = [TABLE_POSITIONS - 1, 0][: min(n, 2)]  # the table's last row, and position 0
    return pos


def random_bf16(rng, shape, spread=4) -> np.ndarray:
    scale = np.exp2(rng.integers(-spread, spread + 1, size=shape[:-1] + (1,))).astype(np.float32)
    return (rng.standard_normal(shape).astype(np.float32) * scale).astype(BF16)


def integer_bf16(rng, shape) -> np.ndarray:
    """Integers in [-15, 15] times a power of two per row: sum(x^2) <= 512 * 225 is exact in any order."""
    scale = np.exp2(rng.integers(-8, 9, size=shape[:-1] + (1,))).astype(np.float32)
    return (rng.integers(-15, 16, shape).astype(np.float32) * scale).astype(BF16)


def bf16_ulps(a, b):
    def ordered(x):
        bits = np.asarray(x, BF16).view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)

    return np.abs(ordered(a) - ordered(b))


def assert_rarely_differs(actual, expected, name):
    frac = float((np.asarray(actual).view(np.uint8) != np.asarray(expected).view(np.uint8)).mean())
    assert frac < RARE, f"{name}: {frac:.2e} of the elements differ (allowed < {RARE})"


def assert_rope_dims_close(actual, expected, pre, name):
    """Rotated dims [..., 64]: within a one-bf16-ulp input flip carried through the rotation, rarely different.
    `pre` holds the reference's values before the rotation."""
    a, e, p = (np.asarray(v, np.float32) for v in (actual, expected, pre))
    pair = np.repeat(np.abs(p[..., 0::2]) + np.abs(p[..., 1::2]), 2, axis=-1)
    bound = 2.0**-7 * (pair + np.abs(e))
    assert (np.abs(a - e) <= bound).all(), f"{name}: rotated dims differ beyond a one-ulp input flip"
    assert_rarely_differs(np.asarray(actual, BF16), np.asarray(expected, BF16), name)


def padded_heads(host: np.ndarray, stride: int) -> np.ndarray:
    """[n, H, 512] bf16 in rows of `stride` elements, the gap filled with a sentinel (0x7F7F)."""
    n = host.shape[0]
    out = np.full((n, stride), 0x7F7F, np.uint16).view(BF16)
    out[:, : host.shape[1] * D] = host.reshape(n, -1)
    return out


# ---- table ------------------------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("freqs", [PLAIN_FREQS, YARN_FREQS], ids=["plain", "yarn"])
def test_table_matches_numpy_cos_sin(freqs, rng, stream):
    n_positions = 1 << 20  # 1M positions: 256 MiB
    host = build_table(freqs, n_positions, stream).to_numpy(stream)
    pos = np.concatenate([np.arange(2048), n_positions - 1 - np.arange(2048), rng.integers(0, n_positions, 60000)])
    cos, sin = ops.rope_cos_sin(pos, freqs)
    for got, want, what in ((host[pos, :, 0], cos, "cos"), (host[pos, :, 1], sin, "sin")):
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
        ulps = np.where(np.sign(got) == np.sign(want), ulps, np.abs(got - want) / 2.0**-149)
        assert ulps.max() <= 1, f"table {what}: {int((ulps > 1).sum())} entries off by more than one fp32 ulp"
        assert (ulps > 0).mean() < 1e-5, f"table {what}: {(ulps > 0).mean():.2e} of the entries differ"


@gpu
def test_table_bad_arguments_and_empty(stream):
    t = DeviceArray.empty((4, 32, 2), np.float32)
    f = DeviceArray.from_numpy(PLAIN_FREQS, stream)
    assert lib.dsv4_rope_table_f32(None, None, 0, 32, stream) == 0
    cases = [
        ((t, f, (1 << 24) + 1, 32), bindings.DSV4_ERR_SHAPE, "n_positions = 16777217"),
        ((t, f, -1, 32), bindings.DSV4_ERR_SHAPE, "n_positions = -1"),
        ((t, f, 4, 0), bindings.DSV4_ERR_SHAPE, "n_pairs = 0"),
        ((t, None, 4, 32), bindings.DSV4_ERR_NULL_POINTER, "freqs is NULL"),
        ((t.ptr + 4, f, 4, 32), bindings.DSV4_ERR_ALIGNMENT, "table = 0x[0-9a-f]+ is not 8-byte"),
    ]
    for args, status, message in cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_rope_table_f32(*args, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_rope_table_f32: {message}", info.value.message), info.value.message


# ---- q path -----------------------------------------------------------------------------------------------------


def run_q(q_host, pos, table_dev, stream, stride=None, table_positions=TABLE_POSITIONS):
    n, h, _ = q_host.shape
    stride = stride or h * D
    q = DeviceArray.from_numpy(padded_heads(q_host, stride), stream)
    pos_dev = DeviceArray.from_numpy(pos, stream)  # alive until to_numpy() has synchronized
    lib.dsv4_rope_q_norm_rope_bf16(q, pos_dev, table_dev, n, h, table_positions, stride,
                                   EPS, stream)  # fmt: skip
    out = q.to_numpy(stream)
    assert (out[:, h * D :].view(np.uint16) == 0x7F7F).all(), "q path wrote into the row padding"
    return out[:, : h * D].reshape(n, h, D)


@gpu
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("n", TOKENS)
def test_q_path_matches_reference(n, heads, table, rng, stream):
    q, pos = random_bf16(rng, (n, heads, D)), random_positions(rng, n)
    out = run_q(q, pos, table[0], stream)
    normed = ops.q_head_norm(q, EPS)
    cos, sin = cos_sin(table[1], pos)
    expected = ops.rope_tail(normed, R, cos, sin)
    ulps = bf16_ulps(out[..., :N], expected[..., :N])
    assert ulps.max() <= 1 and (ulps > 0).mean() < RARE, f"q nope dims: {(ulps > 0).mean():.2e} differ"
    assert_rope_dims_close(out[..., N:], expected[..., N:], normed[..., N:], f"q rope dims n={n} H={heads}")


@gpu
@pytest.mark.parametrize("n", [1, 127])
def test_q_path_bit_exact_on_exact_sums(n, table, rng, stream):
    q, pos = integer_bf16(rng, (n, 128, D)), random_positions(rng, n)
    out = run_q(q, pos, table[0], stream, stride=128 * D + 40)
    cos, sin = cos_sin(table[1], pos)
    expected = ops.rope_tail(ops.q_head_norm(q, EPS), R, cos, sin)
    assert_bit_exact(out, expected.astype(BF16), name=f"q path, exact sums, n={n}")


@gpu
def test_q_path_degenerate_heads_and_bad_positions(table, rng, stream):
    n, h = 4, 8
    q = random_bf16(rng, (n, h, D))
    q[0, 0] = 0  # zero head: 0 / sqrt(eps)
    q[0, 1] = BF16(-2.5)  # all-equal head
    q[1] = integer_bf16(rng, (h, D)) * BF16(2.0**40)  # huge: sum(x^2) ~ 2^113, still exact
    q[2] = integer_bf16(rng, (h, D)) * BF16(2.0**-70)  # tiny: x^2 subnormal, eps dominates the mean
    pos = np.array([5, TABLE_POSITIONS - 1, -1, TABLE_POSITIONS], np.int32)  # the last two: outside the table
    out = run_q(q, pos, table[0], stream)
    normed = ops.q_head_norm(q, EPS)
    cos, sin = cos_sin(table[1], pos[:2])
    assert_bit_exact(out[:2, :2], ops.rope_tail(normed[:2, :2], R, cos, sin).astype(BF16), name="q degenerate heads")
    assert_bit_exact(out[1], ops.rope_tail(normed[1:2], R, cos[1:], sin[1:])[0].astype(BF16), name="q huge head")
    assert np.isnan(out[2:, :, N:].astype(np.float32)).all(), "positions outside the table must give NaN rope dims"
    ulps = bf16_ulps(out[2:, :, :N], normed[2:, :, :N])
    assert ulps.max() <= 1, "positions outside the table must still normalize the nope dims"


@gpu
def test_q_path_bad_arguments(table, stream):
    q = DeviceArray.empty((2, 4 * D), BF16)
    pos = DeviceArray.from_numpy(np.zeros(2, np.int32), stream)
    t = table[0]
    assert lib.dsv4_rope_q_norm_rope_bf16(None, None, None, 0, 4, 8, 4 * D, EPS, stream) == 0
    cases = [
        ((q, pos, t, -1, 4, 8, 4 * D, EPS), bindings.DSV4_ERR_SHAPE, "n_tokens = -1"),
        ((q, pos, t, 2, 0, 8, 4 * D, EPS), bindings.DSV4_ERR_SHAPE, "n_heads = 0"),
        ((q, pos, t, 2, 4, 8, 4 * D - 8, EPS), bindings.DSV4_ERR_STRIDE, "q_stride = 2040"),
        ((q, pos, t, 2, 4, 8, 4 * D + 4, EPS), bindings.DSV4_ERR_STRIDE, "q_stride = 2052"),
        ((q, pos, t, 2, 4, 0, 4 * D, EPS), bindings.DSV4_ERR_SHAPE, "table_positions = 0"),
        ((q, pos, t, 2, 4, 8, 4 * D, -1.0), bindings.DSV4_ERR_ARGUMENT, "eps = -1"),
        ((q, None, t, 2, 4, 8, 4 * D, EPS), bindings.DSV4_ERR_NULL_POINTER, "positions is NULL"),
        ((q.ptr + 8, pos, t, 2, 4, 8, 4 * D, EPS), bindings.DSV4_ERR_ALIGNMENT, "q = 0x[0-9a-f]+ is not 16-byte"),
        ((q, pos, t.ptr + 8, 2, 4, 8, 4 * D, EPS), bindings.DSV4_ERR_ALIGNMENT, "table = 0x[0-9a-f]+ is not 16"),
    ]
    for args, status, message in cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_rope_q_norm_rope_bf16(*args, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_rope_q_norm_rope_bf16: {message}", info.value.message), info.value.message


# ---- inverse rope -------------------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("n", TOKENS)
def test_inverse_rope_bit_exact(n, heads, table, rng, stream):
    o, pos = random_bf16(rng, (n, heads, D)), random_positions(rng, n)
    stride = heads * D + 8 * (n % 3)
    dev = DeviceArray.from_numpy(padded_heads(o, stride), stream)
    pos_dev = DeviceArray.from_numpy(pos, stream)
    lib.dsv4_rope_inverse_bf16(dev, pos_dev, table[0], n, heads, TABLE_POSITIONS,
                               stride, stream)  # fmt: skip
    out = dev.to_numpy(stream)
    assert (out[:, heads * D :].view(np.uint16) == 0x7F7F).all(), "inverse rope wrote into the row padding"
    cos, sin = cos_sin(table[1], pos)
    expected = ops.rope_tail(o, R, cos, sin, inverse=True).astype(BF16)
    assert_bit_exact(out[:, : heads * D].reshape(n, heads, D), expected, name=f"inverse rope n={n} H={heads}")


@gpu
def test_inverse_undoes_forward_and_flags_bad_positions(table, rng, stream):
    n, h = 3, 16
    x, pos = random_bf16(rng, (n, h, D)), np.array([7, TABLE_POSITIONS, 99], np.int32)
    cos, sin = cos_sin(table[1], np.where(pos < TABLE_POSITIONS, pos, 0))
    rotated = ops.rope_tail(x, R, cos, sin).astype(BF16)
    dev = DeviceArray.from_numpy(rotated, stream)
    pos_dev = DeviceArray.from_numpy(pos, stream)
    lib.dsv4_rope_inverse_bf16(dev, pos_dev, table[0], n, h, TABLE_POSITIONS, h * D,
                               stream)  # fmt: skip
    out = dev.to_numpy(stream).astype(np.float32)
    good = [0, 2]
    # two bf16 roundings apart: within 2^-7 of each pair's magnitude
    pair = np.repeat(np.abs(x[good, :, N::2].astype(np.float32)) + np.abs(x[good, :, N + 1 :: 2].astype(np.float32)),
                     2, axis=-1)  # fmt: skip
    assert (np.abs(out[good, :, N:] - x[good, :, N:].astype(np.float32)) <= 2.0**-7 * pair).all()
    assert_bit_exact(out[:, :, :N].astype(BF16), rotated[:, :, :N], name="inverse rope leaves the nope dims")
    assert np.isnan(out[1, :, N:]).all(), "a position outside the table must give NaN rope dims"


@gpu
def test_inverse_bad_arguments(table, stream):
    o = DeviceArray.empty((2, 2 * D), BF16)
    pos = DeviceArray.from_numpy(np.zeros(2, np.int32), stream)
    assert lib.dsv4_rope_inverse_bf16(None, None, None, 0, 2, 8, 2 * D, stream) == 0
    cases = [
        ((o, pos, table[0], 2, 2, 8, D), bindings.DSV4_ERR_STRIDE, "o_stride = 512"),
        ((o, pos, table[0], 2, 2000, 8, 2000 * D), bindings.DSV4_ERR_SHAPE, "n_heads = 2000"),
        ((o, pos, table[0], 2, 2, (1 << 24) + 1, 2 * D), bindings.DSV4_ERR_SHAPE, "table_positions"),
        ((o, pos, None, 2, 2, 8, 2 * D), bindings.DSV4_ERR_NULL_POINTER, "table is NULL"),
        ((o, pos.ptr + 2, table[0], 2, 2, 8, 2 * D), bindings.DSV4_ERR_ALIGNMENT, "positions = 0x[0-9a-f]+ is not 4"),
    ]
    for args, status, message in cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_rope_inverse_bf16(*args, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_rope_inverse_bf16: {message}", info.value.message), info.value.message


# ---- kv path ------------------------------------------------------------------------------------------------------

LAYOUTS = {
    "records": (1, rope.KV_RECORD_BYTES),  # the 584-byte records of the window ring / contiguous buffers
    "paged64": (64, -(-64 * rope.KV_RECORD_BYTES // 576) * 576),  # FlashMLA page blocks, padded to 576 bytes
    "paged48": (48, 48 * rope.KV_RECORD_BYTES + 8),  # not a power of two: the kernel's page divisor rounds
}


def random_slots(rng, n, n_slots):
    """Distinct slots for the n tokens; about 10% skipped with -1, one token at n_slots (outside: skipped)."""
    slots = rng.permutation(n_slots)[:n].astype(np.int32)
    slots[1:][rng.random(n - 1) < 0.1] = -1  # token 0 always written
    if n > 2:
        slots[2] = n_slots
    return slots


def run_kv(kv_host, weight, pos, slots, n_slots, layout, table_dev, stream, kv_stride=D):
    """Runs the kv path into a poisoned cache; returns (rows [n, 584] of the written tokens, valid mask)."""
    n = kv_host.shape[0]
    block_size, block_stride = LAYOUTS[layout]
    n_pages = -(-n_slots // block_size)
    cache = DeviceArray.empty((n_pages * block_stride,), np.uint8).fill_poison(stream)
    kv = np.full((n, kv_stride), 0x7F7F, np.uint16).view(BF16)
    kv[:, :D] = kv_host
    inputs = [DeviceArray.from_numpy(a, stream) for a in (kv, weight, pos, slots)]  # alive until the sync below
    p = KvParams(cache=cache.ptr, kv=inputs[0].ptr, weight=inputs[1].ptr, positions=inputs[2].ptr,
                 slot_mapping=inputs[3].ptr, table=table_dev.ptr, n_tokens=n, n_slots=n_slots,
                 block_size=block_size, block_stride_bytes=block_stride, kv_stride=kv_stride,
                 table_positions=TABLE_POSITIONS, eps=EPS)  # fmt: skip
    lib.dsv4_rope_kv_fp8(p, stream)
    host = cache.to_numpy(stream)
    valid = (slots >= 0) & (slots < n_slots)
    rows = rope.gather_kv_rows(host, slots[valid], block_size, block_stride)
    written = np.zeros(host.size, bool)
    data, scales = rope.kv_slot_offsets(slots[valid], block_size, block_stride)
    written[(data[:, None] + np.arange(rope.KV_DATA_BYTES)).ravel()] = True
    written[(scales[:, None] + np.arange(rope.KV_SCALE_BYTES)).ravel()] = True
    assert (host[~written] == 0xFF).all(), "the kv path wrote outside the entries of its valid slots"
    return rows, valid


def kv_expected(kv, weight, cos, sin):
    normed = ops.rms_norm(kv, weight, EPS)
    rotated = ops.rope_tail(normed, R, cos, sin)
    return rope.pack_kv_rows(rotated), normed


def assert_kv_rows_close(rows, expected, normed, name):
    """Bytes rarely differ; where they do, by a one-ulp flip of a normed value (see the module docstring)."""
    assert (rows[:, -1] == 0).all(), f"{name}: the padding byte of a record is not zero"
    a_nope, e_nope = rows[:, :N].view(quant.E4M3), expected[:, :N].view(quant.E4M3)
    assert_rarely_differs(a_nope, e_nope, f"{name} nope codes")
    a_scale, e_scale = rows[:, 576:583].astype(np.int32), expected[:, 576:583].astype(np.int32)
    assert np.abs(a_scale - e_scale).max(initial=0) <= 1, f"{name}: a scale differs by more than a factor 2"
    assert_rarely_differs(rows[:, 576:583], expected[:, 576:583], f"{name} scale bytes")
    a, e = rope.unpack_kv_rows(rows), rope.unpack_kv_rows(expected)
    scale_max = np.repeat(np.exp2(np.maximum(a_scale, e_scale) - 127.0), 64, axis=1)
    step = 0.125 * np.maximum(np.abs(a[:, :N]), np.abs(e[:, :N])) + 2.0**-9 * scale_max
    assert (np.abs(a[:, :N] - e[:, :N]) <= step).all(), f"{name}: nope values differ by more than one e4m3 step"
    assert_rope_dims_close(a[:, N:], e[:, N:], normed[:, N:], f"{name} rope dims")


def random_kv_weight(rng):
    return quant.bf16_round(1.0 + 0.25 * rng.standard_normal(D))


@gpu
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("n", TOKENS + [3000])
def test_kv_path_matches_reference(n, layout, table, rng, stream):
    n_slots = n + 37
    kv, w, pos = random_bf16(rng, (n, D)), random_kv_weight(rng), random_positions(rng, n)
    slots = random_slots(rng, n, n_slots)
    rows, valid = run_kv(kv, w, pos, slots, n_slots, layout, table[0], stream, kv_stride=D + 64 * (n % 2))
    cos, sin = cos_sin(table[1], pos[valid])
    expected, normed = kv_expected(kv[valid], w, cos, sin)
    assert_kv_rows_close(rows, expected, normed, f"kv rows n={n} {layout}")
    # the same bytes as the reference's simulated FP8 kv (ops.kv_fp8_nope), through the host unpacker
    sim = ops.kv_fp8_nope(ops.rope_tail(normed, R, cos, sin), R)
    assert np.array_equal(rope.unpack_kv_rows(expected), sim)


@gpu
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kv_path_bit_exact_on_exact_sums(layout, table, rng, stream):
    n, n_slots = 300, 1000
    kv, w, pos = integer_bf16(rng, (n, D)), random_kv_weight(rng), random_positions(rng, n)
    slots = random_slots(rng, n, n_slots)
    rows, valid = run_kv(kv, w, pos, slots, n_slots, layout, table[0], stream)
    cos, sin = cos_sin(table[1], pos[valid])
    assert_bit_exact(rows, kv_expected(kv[valid], w, cos, sin)[0], name=f"kv rows, exact sums, {layout}")


@gpu
def test_kv_path_degenerate_rows_and_bad_positions(table, rng, stream):
    kv = np.zeros((6, D), BF16)  # row 0: zeros -> nope codes 0, scales 2^-22 (byte 105), rope 0
    kv[1] = BF16(-1.5)  # all equal
    kv[2] = integer_bf16(rng, (1, D))[0] * BF16(2.0**40)  # huge: sum(x^2) ~ 2^113, still exact
    kv[3] = integer_bf16(rng, (1, D))[0] * BF16(2.0**-70)  # tiny: x^2 subnormal, eps dominates
    kv[4:] = integer_bf16(rng, (2, D))
    w = random_kv_weight(rng)
    pos = np.array([0, 1, 2, 3, -5, TABLE_POSITIONS], np.int32)  # the last two are outside the table
    slots = np.arange(6, dtype=np.int32)
    rows, _ = run_kv(kv, w, pos, slots, 6, "records", table[0], stream)
    cos, sin = cos_sin(table[1], pos[:4])
    expected, _ = kv_expected(kv[:4], w, cos, sin)
    assert_bit_exact(rows[:4], expected, name="kv degenerate rows")
    assert (rows[0, 576:583] == 105).all() and (rope.unpack_kv_rows(rows[:1]) == 0).all()
    assert np.isnan(rows[4:, N:576].copy().view(BF16).astype(np.float32)).all(), "bad positions: NaN rope dims"
    cos0, sin0 = cos_sin(table[1], [0, 0])
    good_nope = kv_expected(kv[4:], w, cos0, sin0)[0]
    assert_bit_exact(rows[4:, :N], good_nope[:, :N], name="kv nope dims at bad positions")
    assert_bit_exact(rows[4:, 576:], good_nope[:, 576:], name="kv scales at bad positions")


@pytest.mark.gpu("rope", "embed")
def test_kv_path_reads_positions_the_previous_kernel_writes(table, rng, stream):
    """The kv kernel reads each position before waiting on the kernel ahead (to start on its table row early) and must
    use the row of the position that kernel wrote. Here an embedding gather writes the positions right before it (as
    the bits of the last of its 2048 output rows, an embedding row made of int32 positions) over a buffer of other
    valid positions. Whether an early read sees an old one is up to the timing: on the H100 none did (this passed
    with the kernel's check after the wait taken out), so this guards the result, not that check."""
    n, rows, dim = 8, 2048, 4096
    old = rng.integers(TABLE_POSITIONS // 2, TABLE_POSITIONS, n).astype(np.int32)  # never equal to a new position
    new = rng.integers(0, TABLE_POSITIONS // 2, n).astype(np.int32)
    emb = np.zeros((2, dim), BF16)
    emb[1].view(np.int32)[:n] = new
    ids = np.zeros(rows, np.int32)
    ids[-1] = 1
    out = np.zeros((rows, dim), BF16)
    out[-1].view(np.int32)[:n] = old
    kv, w = random_bf16(rng, (n, D)), random_kv_weight(rng)
    slots = np.arange(n, dtype=np.int32)
    cache = DeviceArray.empty((n * rope.KV_RECORD_BYTES,), np.uint8).fill_poison(stream)
    out_dev, emb_dev, ids_dev, kv_dev, w_dev, slots_dev = (DeviceArray.from_numpy(a, stream)
                                                           for a in (out, emb, ids, kv, w, slots))
    positions = out_dev.ptr + (rows - 1) * dim * 2
    p = KvParams(cache=cache.ptr, kv=kv_dev.ptr, weight=w_dev.ptr, positions=positions, slot_mapping=slots_dev.ptr,
                 table=table[0].ptr, n_tokens=n, n_slots=n, block_size=1, block_stride_bytes=rope.KV_RECORD_BYTES,
                 kv_stride=D, table_positions=TABLE_POSITIONS, eps=EPS)  # fmt: skip
    busy = [DeviceArray.empty((256 << 20,), np.uint8) for _ in range(2)]
    runtime.stream_synchronize(stream)
    # A 256 MB copy ahead keeps the GPU busy while the host queues both kernels, so the kv kernel is launched behind a
    # running gather, not after it has finished.
    runtime.copy_device_to_device(busy[0].ptr, busy[1].ptr, busy[0].nbytes, stream)
    lib.dsv4_embed_gather_bf16(out_dev, emb_dev, ids_dev, rows, 2, dim, 1, stream)
    lib.dsv4_rope_kv_fp8(p, stream)
    assert np.array_equal(out_dev.to_numpy(stream)[-1].view(np.int32)[:n], new)
    rows_out = cache.to_numpy(stream).reshape(n, rope.KV_RECORD_BYTES)
    cos, sin = cos_sin(table[1], new)
    expected, normed = kv_expected(kv, w, cos, sin)
    assert_kv_rows_close(rows_out, expected, normed, "kv rows at positions written just before")


@gpu
def test_kv_path_bad_arguments(table, stream):
    cache = DeviceArray.empty((4 * 584,), np.uint8)
    kv = DeviceArray.empty((2, D), BF16)
    w = DeviceArray.empty((D,), np.float32)
    ids = DeviceArray.from_numpy(np.zeros(2, np.int32), stream)

    def params(**over):
        f = dict(cache=cache.ptr, kv=kv.ptr, weight=w.ptr, positions=ids.ptr, slot_mapping=ids.ptr,
                 table=table[0].ptr, n_tokens=2, n_slots=4, block_size=1, block_stride_bytes=584, kv_stride=D,
                 table_positions=TABLE_POSITIONS, eps=EPS)  # fmt: skip
        f.update(over)
        return KvParams(**f)

    assert lib.dsv4_rope_kv_fp8(params(n_tokens=0, cache=0, kv=0, weight=0, positions=0, slot_mapping=0,
                                       table=0), stream) == 0  # fmt: skip
    cases = [
        (params(n_tokens=-1), bindings.DSV4_ERR_SHAPE, "n_tokens = -1"),
        (params(block_size=0), bindings.DSV4_ERR_SHAPE, "block_size = 0"),
        (params(block_size=2**31, block_stride_bytes=2**31 * 584), bindings.DSV4_ERR_SHAPE, "block_size = 2147483648"),
        (params(block_stride_bytes=576), bindings.DSV4_ERR_STRIDE, "block_stride_bytes = 576"),
        (params(block_size=2, block_stride_bytes=1172), bindings.DSV4_ERR_STRIDE, "block_stride_bytes = 1172"),
        (params(kv_stride=500), bindings.DSV4_ERR_STRIDE, "kv_stride = 500"),
        (params(table_positions=0), bindings.DSV4_ERR_SHAPE, "table_positions = 0"),
        (params(eps=float("inf")), bindings.DSV4_ERR_ARGUMENT, "eps = inf"),
        (params(slot_mapping=0), bindings.DSV4_ERR_NULL_POINTER, "slot_mapping is NULL"),
        (params(cache=cache.ptr + 4), bindings.DSV4_ERR_ALIGNMENT, "cache = 0x[0-9a-f]+ is not 8-byte"),
        (params(kv=kv.ptr + 8), bindings.DSV4_ERR_ALIGNMENT, "kv = 0x[0-9a-f]+ is not 16-byte"),
        (params(weight=w.ptr + 4), bindings.DSV4_ERR_ALIGNMENT, "weight = 0x[0-9a-f]+ is not 16-byte"),
    ]
    for p, status, message in cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_rope_kv_fp8(p, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_rope_kv_fp8: {message}", info.value.message), info.value.message
    assert lib.dsv4_rope_kv_params_size() == ctypes.sizeof(KvParams)


# ---- host layout (no GPU) -----------------------------------------------------------------------------------------


def test_kv_record_pack_unpack_is_the_reference_fp8_kv(rng):
    kv = quant.bf16_round(rng.standard_normal((50, D)) * np.exp2(rng.integers(-20, 20, (50, 1))))
    kv[0] = 0
    rows = rope.pack_kv_rows(kv)
    assert rows.shape == (50, 584) and (rows[:, 583] == 0).all()
    assert np.array_equal(rope.unpack_kv_rows(rows), ops.kv_fp8_nope(kv, R))
    assert np.array_equal(rows[:, N:576].copy().view(BF16).astype(np.float32), kv[:, N:])
    q, s = quant.act_quant(kv[:, :N], 64)
    assert np.array_equal(rows[:, :N], q.view(np.uint8))
    assert np.array_equal(np.exp2(rows[:, 576:583].astype(np.float64) - 127), s)


def test_kv_slot_offsets():
    data, scales = rope.kv_slot_offsets([0, 1, 5], 1, 584)
    assert list(data) == [0, 584, 5 * 584] and list(scales) == [576, 584 + 576, 5 * 584 + 576]
    stride = 65 * 576
    data, scales = rope.kv_slot_offsets([0, 63, 64, 130], 64, stride)
    assert list(data) == [0, 63 * 576, stride, 2 * stride + 2 * 576]
    assert list(scales) == [64 * 576, 64 * 576 + 63 * 8, stride + 64 * 576, 2 * stride + 64 * 576 + 16]
