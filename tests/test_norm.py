"""cuda/norm.cu against pydsv4.reference: RMSNorm (ops.rms_norm), FP8 activation quantization (quant.act_quant),
and the two fused.

Tolerances, from the formats:
  - The kernels sum x^2 in another order than NumPy's pairwise fp32 sum, so 1/rms can differ by an fp32 ulp
    (2^-24 relative). A bf16 output then differs by one bf16 ulp where its fp32 value lies within ~2^-24 of a
    bf16 rounding tie: we allow 1 bf16 ulp at fewer than 0.1% of the elements (seen: ~1e-5), and nothing else.
  - Quantization is exact given the same bf16 values (a power-of-two scale read off fp32 bits, one exact
    multiply, e4m3 round-to-nearest-even), so q and scales are compared bit-exactly against quant.act_quant of
    the kernel's own bf16 normed output, and by dequantized value (one quantization step, rare) against the
    reference's normed values.
"""

import ctypes
import re

import ml_dtypes
import numpy as np
import pytest
from compare import assert_bit_exact

from pydsv4.cuda import DeviceArray, DSV4Error, bindings, lib
from pydsv4.cuda.families.norm import ActQuantParams, RmsQuantParams
from pydsv4.reference import ops, quant

pytestmark = pytest.mark.gpu("norm")

BF16 = ml_dtypes.bfloat16
EPS = 1e-6  # V4 norm_eps
WIDTHS = [4096, 7168]  # V4-Flash, V4-Pro dim
TOKENS = [1, 13, 64, 127, 3000]
RARE = 1e-3  # largest fraction of elements allowed to differ by one bf16 ulp (summation order)


# ---- helpers ----------------------------------------------------------------------------------------------------


def random_rows(rng, n, dim, magnitude=None) -> np.ndarray:
    """bf16 [n, dim]: normal values, each row scaled by its own power of two (2^-4 .. 2^4 unless given)."""
    if magnitude is None:
        magnitude = np.exp2(rng.integers(-4, 5, size=(n, 1))).astype(np.float32)
    return (rng.standard_normal((n, dim)).astype(np.float32) * magnitude).astype(BF16)


def random_weight(rng, dim) -> np.ndarray:
    """fp32 [dim] holding bf16 values (the checkpoint stores norm weights in bf16)."""
    return quant.bf16_round(1.0 + 0.25 * rng.standard_normal(dim))


def padded(host: np.ndarray, stride: int, fill=0xFF) -> np.ndarray:
    """host [n, dim] placed in rows of `stride` elements; the gap holds `fill` bytes."""
    n, dim = host.shape
    out = np.full((n, stride * host.itemsize), fill, np.uint8).view(host.dtype)
    out[:, :dim] = host
    return out


def bf16_ulps(a, b) -> np.ndarray:
    """|a - b| in bf16 ulps (ordered bit patterns), for finite bf16 arrays."""

    def ordered(x):
        bits = np.asarray(x, BF16).view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)

    return np.abs(ordered(a) - ordered(b))


def assert_bf16_rarely_one_ulp(actual, expected, name):
    ulps = bf16_ulps(actual, expected)
    assert ulps.max(initial=0) <= 1, f"{name}: {int((ulps > 1).sum())} elements differ by more than one bf16 ulp"
    frac = float((ulps > 0).mean()) if ulps.size else 0.0
    assert frac < RARE, f"{name}: {frac:.2e} of the elements differ by one bf16 ulp (allowed < {RARE})"


def assert_quant_close(q, scale, q_ref, scale_ref, block, name):
    """Dequantized values within one quantization step (the larger scale), differing at < RARE of positions."""
    n, dim = q.shape
    deq = (q.astype(np.float32).reshape(n, -1, block) * scale[:, :, None]).reshape(n, dim)
    ref = (q_ref.astype(np.float32).reshape(n, -1, block) * scale_ref[:, :, None]).reshape(n, dim)
    scale_max = np.repeat(np.maximum(scale, scale_ref), block, axis=1)
    # one e4m3 step: 2^-3 relative for normals (3 mantissa bits), 2^-9 * scale among the subnormals
    step = 0.125 * np.maximum(np.abs(deq), np.abs(ref)) + 2.0**-9 * scale_max
    assert (np.abs(deq - ref) <= step).all(), f"{name}: dequantized values differ by more than one e4m3 step"
    frac = float((q.view(np.uint8) != q_ref.view(np.uint8)).mean())
    assert frac < RARE, f"{name}: {frac:.2e} of the e4m3 codes differ from the reference (allowed < {RARE})"


def scale_layout(n, n_blocks, transposed):
    """(shape of the host array holding the scales, stride_token, stride_block, view to [n, n_blocks])."""
    if transposed:  # [n_blocks, n rounded up to 4]: a GEMM-friendly column-major layout
        n_pad = -(-n // 4) * 4
        return (n_blocks, n_pad), 1, n_pad, lambda s: s[:, :n].T
    return (n, n_blocks), n_blocks, 1, lambda s: s


def run_rms(x_host, weight, stream, x_stride=None, y_stride=None, eps=EPS):
    n, dim = x_host.shape
    x_stride = x_stride or dim
    y_stride = y_stride or dim
    x = DeviceArray.from_numpy(padded(x_host, x_stride), stream)
    w = DeviceArray.from_numpy(weight, stream)
    y = DeviceArray.empty((n + 1, y_stride), BF16).fill_poison(stream)  # one spare row
    lib.dsv4_norm_rms_bf16(y, x, w, n, dim, y_stride, x_stride, eps, stream)
    out = y.to_numpy(stream)
    assert (out[n:].view(np.uint16) == 0xFFFF).all(), "rms_norm wrote past n_tokens rows"
    assert (out[:n, dim:].view(np.uint16) == 0xFFFF).all(), "rms_norm wrote into the row padding"
    return out[:n, :dim]


def run_rms_quant(x_host, weight, stream, with_y=True, transposed=False, x_stride=None):
    n, dim = x_host.shape
    nb = dim // 128
    x_stride = x_stride or dim
    x = DeviceArray.from_numpy(padded(x_host, x_stride), stream)
    w = DeviceArray.from_numpy(weight, stream)
    q = DeviceArray.empty((n + 1, dim), ml_dtypes.float8_e4m3fn).fill_poison(stream)
    shape, sst, ssb, view = scale_layout(n, nb, transposed)
    s = DeviceArray.empty(shape, np.float32).fill_poison(stream)
    y = DeviceArray.empty((n + 1, dim), BF16).fill_poison(stream) if with_y else None
    p = RmsQuantParams(q=q.ptr, scale=s.ptr, y=y.ptr if y else 0, x=x.ptr, weight=w.ptr, n_tokens=n, dim=dim,
                       q_stride=dim, scale_stride_token=sst, scale_stride_block=ssb, y_stride=dim,
                       x_stride=x_stride, eps=EPS)  # fmt: skip
    lib.dsv4_norm_rms_quant_e4m3(p, stream)
    q_out, s_out = q.to_numpy(stream), s.to_numpy(stream)
    assert (q_out[n:].view(np.uint8) == 0xFF).all(), "rms_quant wrote past n_tokens rows of q"
    if transposed:
        assert (s_out[:, n:].view(np.uint32) == 0xFFFFFFFF).all(), "rms_quant wrote into the scale padding"
    y_out = None
    if with_y:
        y_out = y.to_numpy(stream)
        assert (y_out[n:].view(np.uint16) == 0xFFFF).all(), "rms_quant wrote past n_tokens rows of y"
        y_out = y_out[:n]
    return q_out[:n], view(s_out), y_out


def run_act_quant(x_host, block, stream, transposed=False, x_stride=None, q_stride=None):
    n, dim = x_host.shape
    nb = dim // block
    x_stride = x_stride or dim
    q_stride = q_stride or dim
    x = DeviceArray.from_numpy(padded(x_host, x_stride), stream)
    q = DeviceArray.empty((n + 1, q_stride), ml_dtypes.float8_e4m3fn).fill_poison(stream)
    shape, sst, ssb, view = scale_layout(n, nb, transposed)
    s = DeviceArray.empty(shape, np.float32).fill_poison(stream)
    p = ActQuantParams(q=q.ptr, scale=s.ptr, x=x.ptr, n_tokens=n, dim=dim, q_stride=q_stride,
                       scale_stride_token=sst, scale_stride_block=ssb, x_stride=x_stride, block=block)  # fmt: skip
    lib.dsv4_norm_act_quant_e4m3(p, stream)
    q_out, s_out = q.to_numpy(stream), s.to_numpy(stream)
    assert (q_out[n:].view(np.uint8) == 0xFF).all(), "act_quant wrote past n_tokens rows"
    assert (q_out[:n, dim:].view(np.uint8) == 0xFF).all(), "act_quant wrote into the q row padding"
    if transposed:
        assert (s_out[:, n:].view(np.uint32) == 0xFFFFFFFF).all(), "act_quant wrote into the scale padding"
    return q_out[:n, :dim], view(s_out)


# ---- RMSNorm ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("n", TOKENS)
def test_rms_matches_reference(dim, n, rng, stream):
    x, w = random_rows(rng, n, dim), random_weight(rng, dim)
    y = run_rms(x, w, stream)
    assert_bf16_rarely_one_ulp(y, ops.rms_norm(x, w, EPS), f"rms_norm n={n} dim={dim}")


@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("n", [1, 64, 127])
def test_rms_and_rms_quant_bit_exact_on_exact_sums(dim, n, rng, stream):
    # integers in [-15, 15] times a power of two per row: sum(x^2) <= 7168 * 225 < 2^24 is exact in any order,
    # so everything but the summation order is checked bit for bit
    scale = np.exp2(rng.integers(-8, 9, (n, 1))).astype(np.float32)
    x = (rng.integers(-15, 16, (n, dim)).astype(np.float32) * scale).astype(BF16)
    w = random_weight(rng, dim)
    y_ref = ops.rms_norm(x, w, EPS)
    assert_bit_exact(run_rms(x, w, stream), y_ref.astype(BF16), name="rms_norm, exact sums")
    q, s, y = run_rms_quant(x, w, stream)
    q_ref, s_ref = quant.act_quant(y_ref, 128)
    assert_bit_exact(y, y_ref.astype(BF16), name="rms_quant y, exact sums")
    assert_bit_exact(q, q_ref.astype(ml_dtypes.float8_e4m3fn), name="rms_quant q, exact sums")
    assert_bit_exact(s, s_ref, name="rms_quant scales, exact sums")


@pytest.mark.parametrize("dim", [8, 136, 512, 1024, 1536, 2056, 8200, 16384])
def test_rms_other_widths_and_strides(dim, rng, stream):
    # every launch configuration (64..512 threads, 1..4 vectors each), full and partial last rounds
    n = 5
    x, w = random_rows(rng, n, dim), random_weight(rng, dim)
    y = run_rms(x, w, stream, x_stride=dim + 8, y_stride=dim + 24)
    assert_bf16_rarely_one_ulp(y, ops.rms_norm(x, w, EPS), f"rms_norm dim={dim} strided")


def test_rms_in_place(rng, stream):
    n, dim = 13, 7168
    x, w = random_rows(rng, n, dim), random_weight(rng, dim)
    buf = DeviceArray.from_numpy(x, stream)
    w_dev = DeviceArray.from_numpy(w, stream)  # kept alive until the kernel has run (to_numpy syncs)
    lib.dsv4_norm_rms_bf16(buf, buf, w_dev, n, dim, dim, dim, EPS, stream)
    assert_bf16_rarely_one_ulp(buf.to_numpy(stream), ops.rms_norm(x, w, EPS), "rms_norm in place")


@pytest.mark.parametrize("case", ["zero", "equal", "huge", "tiny", "one_hot"])
def test_rms_degenerate_rows(case, rng, stream):
    n, dim = 4, 7168
    if case == "zero":
        x = np.zeros((n, dim), BF16)
    elif case == "equal":
        x = np.repeat(rng.standard_normal((n, 1)).astype(np.float32), dim, axis=1).astype(BF16)
    elif case == "one_hot":
        x = np.zeros((n, dim), BF16)
        x[np.arange(n), rng.integers(0, dim, n)] = BF16(3.0)
    else:
        # 2^50: sum(x^2) ~ 2^113 stays finite; 2^-70: x^2 is an fp32 subnormal, eps dominates the mean
        x = random_rows(rng, n, dim, magnitude=np.float32(2.0**50 if case == "huge" else 2.0**-70))
    w = random_weight(rng, dim)
    y = run_rms(x, w, stream)
    assert_bf16_rarely_one_ulp(y, ops.rms_norm(x, w, EPS), f"rms_norm {case} rows")


# ---- RMSNorm + FP8 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("n", TOKENS)
def test_rms_quant_matches_reference(dim, n, rng, stream):
    x, w = random_rows(rng, n, dim), random_weight(rng, dim)
    q, s, y = run_rms_quant(x, w, stream)
    # exact: the quantizer of the kernel's own normed bf16 values
    q_exp, s_exp = quant.act_quant(y.astype(np.float32), 128)
    assert_bit_exact(q, q_exp.astype(ml_dtypes.float8_e4m3fn), name="rms_quant q (of its own y)")
    assert_bit_exact(s, s_exp, name="rms_quant scales (of its own y)")
    # against the reference chain: y within the summation-order ulp, q within one step, both rare
    y_ref = ops.rms_norm(x, w, EPS)
    assert_bf16_rarely_one_ulp(y, y_ref, f"rms_quant y n={n} dim={dim}")
    q_ref, s_ref = quant.act_quant(y_ref, 128)
    assert_quant_close(q, s, q_ref, s_ref, 128, f"rms_quant n={n} dim={dim}")


@pytest.mark.parametrize("transposed", [False, True], ids=["row_major_scales", "transposed_scales"])
def test_rms_quant_without_y_and_scale_layouts(transposed, rng, stream):
    n, dim = 127, 7168
    x, w = random_rows(rng, n, dim), random_weight(rng, dim)
    q_y, s_y, _ = run_rms_quant(x, w, stream, with_y=True)
    q, s, _ = run_rms_quant(x, w, stream, with_y=False, transposed=transposed, x_stride=dim + 64)
    assert_bit_exact(q, q_y, name="rms_quant q without y")
    assert_bit_exact(np.ascontiguousarray(s), s_y, name="rms_quant scales without y")


@pytest.mark.parametrize("case", ["zero", "equal", "huge", "tiny"])
def test_rms_quant_degenerate_rows(case, rng, stream):
    n, dim = 3, 4096
    if case == "zero":
        x = np.zeros((n, dim), BF16)
    elif case == "equal":
        x = np.full((n, dim), BF16(-1.5))
    else:
        # integer-valued rows (exact sums, see the test above) at 2^40 (sum ~ 2^113) or 2^-70 (x^2 subnormal)
        magnitude = np.float32(2.0**40 if case == "huge" else 2.0**-70)
        x = (rng.integers(-15, 16, (n, dim)).astype(np.float32) * magnitude).astype(BF16)
    w = random_weight(rng, dim)  # zero rows: y = +-0 everywhere, every block at the amax floor (scale 2^-22)
    q, s, y = run_rms_quant(x, w, stream)
    q_exp, s_exp = quant.act_quant(ops.rms_norm(x, w, EPS), 128)
    assert_bit_exact(q, q_exp.astype(ml_dtypes.float8_e4m3fn), name=f"rms_quant q {case}")
    assert_bit_exact(s, s_exp, name=f"rms_quant scales {case}")


# ---- standalone FP8 quantization ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("n", TOKENS)
def test_act_quant_bit_exact(block, dim, n, rng, stream):
    x = random_rows(rng, n, dim)
    q, s = run_act_quant(x, block, stream)
    q_exp, s_exp = quant.act_quant(x.astype(np.float32), block)
    assert_bit_exact(q, q_exp.astype(ml_dtypes.float8_e4m3fn), name=f"act_quant q block {block}")
    assert_bit_exact(s, s_exp, name=f"act_quant scales block {block}")


@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("transposed", [False, True], ids=["row_major_scales", "transposed_scales"])
@pytest.mark.parametrize("dim", [128, 1536, 2048 + 128, 16384 + 128, 32768])
def test_act_quant_widths_strides_layouts(block, transposed, dim, rng, stream):
    n = 13
    x = random_rows(rng, n, dim)
    q, s = run_act_quant(x, block, stream, transposed=transposed, x_stride=dim + 8, q_stride=dim + 16)
    q_exp, s_exp = quant.act_quant(x.astype(np.float32), block)
    assert_bit_exact(q, q_exp.astype(ml_dtypes.float8_e4m3fn), name="act_quant q strided")
    assert_bit_exact(np.ascontiguousarray(s), s_exp, name="act_quant scales strided")


@pytest.mark.parametrize("case", ["zero", "equal", "max_bf16", "subnormal", "ties", "mixed_blocks"])
def test_act_quant_degenerate_values(case, rng, stream):
    n, dim, block = 4, 512, 64
    if case == "zero":
        x = np.zeros((n, dim), BF16)
    elif case == "equal":
        x = np.full((n, dim), BF16(448.0 * 2.0**-30))
    elif case == "max_bf16":  # |x| up to 3.39e38: scale 2^120
        x = (rng.choice([-1.0, 1.0], (n, dim)) * np.float32(ml_dtypes.finfo(BF16).max)).astype(BF16)
        x[:, ::3] = BF16(1.0)
    elif case == "subnormal":  # bf16 subnormals (no flush to zero), amax below the 1e-4 floor
        x = (rng.integers(-127, 128, (n, dim)).astype(np.float32) * np.float32(2.0**-133)).astype(BF16)
    elif case == "ties":  # x / scale exactly halfway between e4m3 neighbours: round to even
        # (8 + j + 1/2) * 2^(k-3) lies halfway in the binade [2^k, 2^(k+1)) of e4m3 normals (step 2^(k-3));
        # (2m + 1) * 2^-10 halfway between subnormals (step 2^-9); amax 448 in each block makes the scale 1
        j, k, m = rng.integers(0, 8, (n, dim)), rng.integers(-6, 8, (n, dim)), rng.integers(0, 8, (n, dim))
        normal = (17 + 2 * j).astype(np.float32) * np.exp2(k - 4).astype(np.float32)
        subnormal = (2 * m + 1).astype(np.float32) * np.float32(2.0**-10)
        x = np.where(rng.random((n, dim)) < 0.5, normal, subnormal) * rng.choice([-1, 1], (n, dim))
        x[:, ::block] = 448.0
        x = x.astype(BF16)
    else:  # blocks of wildly different magnitudes in one row
        x = random_rows(rng, n, dim).astype(np.float32)
        x *= np.exp2(rng.integers(-60, 60, (n, dim // block, 1)).astype(np.float32)).repeat(block, 1).reshape(n, dim)
        x = x.astype(BF16)
    q, s = run_act_quant(x, block, stream)
    q_exp, s_exp = quant.act_quant(x.astype(np.float32), block)
    assert_bit_exact(q, q_exp.astype(ml_dtypes.float8_e4m3fn), name=f"act_quant q {case}")
    assert_bit_exact(s, s_exp, name=f"act_quant scales {case}")


# ---- empty work and bad arguments ---------------------------------------------------------------------------------


def test_zero_tokens_is_a_no_op(stream):
    y = DeviceArray.empty((1, 64), BF16).fill_poison(stream)
    assert lib.dsv4_norm_rms_bf16(y, None, None, 0, 64, 64, 64, EPS, stream) == 0
    p = RmsQuantParams(n_tokens=0, dim=128, q_stride=128, scale_stride_token=1, scale_stride_block=1,
                       x_stride=128, eps=EPS)  # fmt: skip
    assert lib.dsv4_norm_rms_quant_e4m3(p, stream) == 0
    a = ActQuantParams(n_tokens=0, dim=128, q_stride=128, scale_stride_token=1, scale_stride_block=1,
                       x_stride=128, block=128)  # fmt: skip
    assert lib.dsv4_norm_act_quant_e4m3(a, stream) == 0
    assert (y.to_numpy(stream).view(np.uint16) == 0xFFFF).all()


def test_params_struct_sizes_match():
    assert lib.dsv4_norm_rms_quant_params_size() == ctypes.sizeof(RmsQuantParams)
    assert lib.dsv4_norm_act_quant_params_size() == ctypes.sizeof(ActQuantParams)


def test_rms_bad_arguments(stream):
    n, dim = 2, 64
    x = DeviceArray.empty((n, dim), BF16)
    y = DeviceArray.empty((n, dim), BF16)
    w = DeviceArray.empty((dim,), np.float32)
    cases = [
        ((y, x, w, n, 60, dim, dim, EPS), bindings.DSV4_ERR_SHAPE, "dim = 60"),
        ((y, x, w, n, 16392, 16392, 16392, EPS), bindings.DSV4_ERR_SHAPE, "dim = 16392"),
        ((y, x, w, -1, dim, dim, dim, EPS), bindings.DSV4_ERR_SHAPE, "n_tokens = -1"),
        ((y, x, w, n, dim, 56, dim, EPS), bindings.DSV4_ERR_STRIDE, "y_stride = 56"),
        ((y, x, w, n, dim, dim, 68, EPS), bindings.DSV4_ERR_STRIDE, "x_stride = 68"),
        ((y, x, w, n, dim, dim, dim, -1.0), bindings.DSV4_ERR_ARGUMENT, "eps = -1"),
        ((y, x, w, n, dim, dim, dim, float("nan")), bindings.DSV4_ERR_ARGUMENT, "eps = nan"),
        ((None, x, w, n, dim, dim, dim, EPS), bindings.DSV4_ERR_NULL_POINTER, "y is NULL"),
        ((y, x.ptr + 2, w, n, dim, dim, dim, EPS), bindings.DSV4_ERR_ALIGNMENT, "x = 0x[0-9a-f]+ is not 16-byte"),
        ((y, x, w.ptr + 4, n, dim, dim, dim, EPS), bindings.DSV4_ERR_ALIGNMENT, "weight = 0x[0-9a-f]+ is not 16"),
    ]
    for args, status, message in cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_norm_rms_bf16(*args, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_norm_rms_bf16: {message}", info.value.message), info.value.message


def test_quant_bad_arguments(stream):
    n, dim = 2, 256
    x = DeviceArray.empty((n, dim), BF16)
    q = DeviceArray.empty((n, dim), ml_dtypes.float8_e4m3fn)
    s = DeviceArray.empty((n, 4), np.float32)
    w = DeviceArray.empty((dim,), np.float32)

    def rq(**over):
        f = dict(q=q.ptr, scale=s.ptr, y=0, x=x.ptr, weight=w.ptr, n_tokens=n, dim=dim, q_stride=dim,
                 scale_stride_token=2, scale_stride_block=1, y_stride=dim, x_stride=dim, eps=EPS)  # fmt: skip
        f.update(over)
        return RmsQuantParams(**f)

    def aq(**over):
        f = dict(q=q.ptr, scale=s.ptr, x=x.ptr, n_tokens=n, dim=dim, q_stride=dim, scale_stride_token=4,
                 scale_stride_block=1, x_stride=dim, block=64)  # fmt: skip
        f.update(over)
        return ActQuantParams(**f)

    rms_cases = [
        (rq(dim=192), bindings.DSV4_ERR_SHAPE, "dim = 192"),
        (rq(scale_stride_token=1), bindings.DSV4_ERR_STRIDE, "scale strides"),
        (rq(q_stride=dim + 4), bindings.DSV4_ERR_STRIDE, "q_stride"),
        (rq(y=x.ptr, y_stride=8), bindings.DSV4_ERR_STRIDE, "y_stride = 8"),
        (rq(q=0), bindings.DSV4_ERR_NULL_POINTER, "q is NULL"),
        (rq(weight=0), bindings.DSV4_ERR_NULL_POINTER, "weight is NULL"),
        (rq(scale=s.ptr + 2), bindings.DSV4_ERR_ALIGNMENT, "scale = 0x[0-9a-f]+ is not 4-byte"),
        (rq(y=x.ptr + 8), bindings.DSV4_ERR_ALIGNMENT, "y = 0x[0-9a-f]+ is not 16-byte"),
        (rq(eps=-1.0), bindings.DSV4_ERR_ARGUMENT, "eps"),
    ]
    for params, status, message in rms_cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_norm_rms_quant_e4m3(params, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_norm_rms_quant_e4m3: {message}", info.value.message), info.value.message
    act_cases = [
        (aq(block=32), bindings.DSV4_ERR_ARGUMENT, "block = 32"),
        (aq(dim=96), bindings.DSV4_ERR_SHAPE, "dim = 96"),
        (aq(n_tokens=-3), bindings.DSV4_ERR_SHAPE, "n_tokens = -3"),
        (aq(scale_stride_token=0, scale_stride_block=0), bindings.DSV4_ERR_STRIDE, "scale strides"),
        (aq(x_stride=dim - 8), bindings.DSV4_ERR_STRIDE, "x_stride"),
        (aq(x=0), bindings.DSV4_ERR_NULL_POINTER, "x is NULL"),
        (aq(q=q.ptr + 4), bindings.DSV4_ERR_ALIGNMENT, "q = 0x[0-9a-f]+ is not 8-byte"),
    ]
    for params, status, message in act_cases:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_norm_act_quant_e4m3(params, stream)
        assert info.value.status == status, info.value
        assert re.match(f"dsv4_norm_act_quant_e4m3: {message}", info.value.message), info.value.message
    with pytest.raises(TypeError):
        lib.dsv4_norm_act_quant_e4m3(rq(), stream)  # the wrong params struct never reaches C
