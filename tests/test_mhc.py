"""cuda/mhc.cu against pydsv4.reference: hc_pre + RMSNorm + FP8 quantization (ops.hc_pre, ops.rms_norm,
quant.act_quant), hc_post (ops.hc_post), hc_head (ops.hc_head, + ops.rms_norm).

The reference contracts in float64 and rounds once; the kernels sum in fp32 in another order. Tolerances:
  - mix: fp32 sums of tf32-split products (error ~2^-22 |fn| per product) over K = 4 dim: ~1e-6 relative
    (measured before the per-step accumulator fold: 2e-5, from the tensor cores' truncating accumulation).
    post = 2 sigmoid(.) moves by at most |scale| / 2 times that: atol POST_ATOL; comb keeps errors of that size
    through 20 Sinkhorn iterations of fp32 divisions: atol COMB_ATOL.
  - bf16 outputs y = bf16(sum_i w_i v_i) (hc_pre's and hc_head's y with w = pre, hc_post's stream): the fp32 sum
    is off the exact one by at most REL_* times the size of its terms, T = sum_i |w_i v_i| (pre carries the mix
    error, ~1e-6 relative; an fp32 fma chain adds ~2^-22 T). So |gpu - ref| <= 1 bf16 ulp of ref + REL * T.
    After an RMSNorm the error of y (one of its bf16 ulps + REL * T) is scaled by |weight| / rms, plus 2 ulps of
    the normed value. Where the sum cancels that is many ulps of a tiny y; a correct kernel is bit-equal
    everywhere else but where the value sits that close to a rounding tie, so elements that differ at all must
    be rare: RARE for hc_post, RARE_Y where pre's error adds in (simulated: 9e-4 at a 2e-6 mix error).
  - FP8: quantization is exact given the bf16 values, so q and scales are bit-exact against quant.act_quant of
    the kernel's own normed y, and within one e4m3 step (at < RARE of the positions) of the reference's.
"""

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from compare import assert_bit_exact, assert_close

from pydsv4.cuda import DeviceArray, DSV4Error, bindings, lib
from pydsv4.cuda.families.mhc import HeadParams, PostMixParams, PreParams
from pydsv4.reference import ops, quant

pytestmark = pytest.mark.gpu("mhc")

BF16 = ml_dtypes.bfloat16
E4M3 = ml_dtypes.float8_e4m3fn
HC = 4
MIX = 24
ITERS = 20  # hc_sinkhorn_iters
HC_EPS = 1e-6
NORM_EPS = 1e-6
WIDTHS = [4096, 7168]  # V4-Flash, V4-Pro dim
TOKENS = [1, 13, 64, 127, 2048]
RARE = 1e-3
RARE_Y = 5e-3  # y of hc_pre / hc_head: pre's ~1e-6 error flips y's bf16 rounding at ~1e-3 of the elements
POST_ATOL = 1e-5
COMB_ATOL = 2e-5
REL_PRE = 1e-5  # hc_pre / hc_head y: pre's error (~1e-6) plus the fp32 chain, with margin
REL_POST = 2.0**-21  # hc_post: a 5-term fp32 fma chain (<= 5 roundings of 2^-24 T)


# ---- inputs ------------------------------------------------------------------------------------------------------


def random_stream(rng, n, dim, exponent_range=4) -> np.ndarray:
    """bf16 [n, 4, dim]: normal values, each token scaled by its own power of two."""
    scale = np.exp2(rng.integers(-exponent_range, exponent_range + 1, size=(n, 1, 1))).astype(np.float32)
    return (rng.standard_normal((n, HC, dim)).astype(np.float32) * scale).astype(BF16)


def random_hc_weights(rng, dim, mix=MIX):
    """fn [mix, 4 dim] fp32 scaled so mix ~ N(0, 1); scale [3] (or [1]); base [mix]; all fp32."""
    fn = (rng.standard_normal((mix, HC * dim)) / np.sqrt(HC * dim)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, 3 if mix == MIX else 1).astype(np.float32)
    base = rng.standard_normal(mix).astype(np.float32)
    return fn, scale, base


def random_norm_weight(rng, dim) -> np.ndarray:
    return quant.bf16_round(1.0 + 0.25 * rng.standard_normal(dim))


# ---- comparisons -------------------------------------------------------------------------------------------------


def bf16_ulp(x) -> np.ndarray:
    """One bf16 ulp at |x| (float64): 2^(exponent - 7), the smallest normal's for zero and subnormals."""
    exponent = np.floor(np.log2(np.maximum(np.abs(np.asarray(x, np.float64)), 2.0**-126)))
    return np.exp2(exponent - 7)


def assert_bf16_near_exact(actual, expected, bound, name, max_ulps=1, rare=RARE):
    """|actual - expected| <= max_ulps bf16 ulps of expected + bound (absolute, per element), and bit-equal at all
    but fewer than `rare` of the elements."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    excess = np.abs(a - e) - (max_ulps * bf16_ulp(e) + bound)
    if (excess > 0).any():
        worst = np.unravel_index(int(np.argmax(excess)), a.shape)
        raise AssertionError(
            f"{name}: {int((excess > 0).sum())} of {a.size} elements exceed {max_ulps} ulp + bound; worst at "
            f"{tuple(int(i) for i in worst)}: actual {a[worst]:.9g}, expected {e[worst]:.9g}, bound {bound[worst]:.6g}"
        )
    frac = float((a != e).mean()) if a.size else 0.0
    assert frac < rare, f"{name}: {frac:.2e} of the elements differ (allowed < {rare})"


def sum_bound(x_host) -> np.ndarray:
    """REL_PRE * T of y = sum_i pre_i x_i: T = sum_i |x_i| (pre_i <= 1 + eps)."""
    return REL_PRE * np.abs(x_host.astype(np.float64)).sum(axis=1)


def normed_bound(y, x_host, weight) -> np.ndarray:
    """Error bound of rms_norm(y) carried from y: |weight| / rms(y) times (one bf16 ulp of y + y's sum bound)."""
    inv_rms = 1.0 / np.sqrt(np.mean(np.square(y, dtype=np.float64), axis=-1, keepdims=True) + NORM_EPS)
    return np.abs(weight) * inv_rms * (bf16_ulp(y) + sum_bound(x_host))


def dequant(q, scale, block=128):
    n, dim = q.shape
    return (q.astype(np.float32).reshape(n, -1, block) * scale[:, :, None]).reshape(n, dim)


def assert_quant_close(q, scale, q_ref, scale_ref, name, block=128):
    deq, ref = dequant(q, scale, block), dequant(q_ref, scale_ref, block)
    scale_max = np.repeat(np.maximum(scale, scale_ref), block, axis=1)
    step = 0.125 * np.maximum(np.abs(deq), np.abs(ref)) + 2.0**-9 * scale_max  # one e4m3 step
    assert (np.abs(deq - ref) <= step).all(), f"{name}: dequantized values differ by more than one e4m3 step"
    frac = float((q.view(np.uint8) != q_ref.view(np.uint8)).mean())
    assert frac < RARE, f"{name}: {frac:.2e} of the e4m3 codes differ from the reference (allowed < {RARE})"


# ---- runners -----------------------------------------------------------------------------------------------------


def scale_layout(n, n_blocks, transposed):
    """(host shape of the scales, stride_token, stride_block, view to [n, n_blocks])."""
    if transposed:
        n_pad = -(-n // 4) * 4
        return (n_blocks, n_pad), 1, n_pad, lambda s: s[:, :n].T
    return (n, n_blocks), n_blocks, 1, lambda s: s


def workspace(n, dim, entry=None):
    nbytes = (entry or lib.dsv4_mhc_pre_workspace_bytes)(n, dim)
    return DeviceArray.empty(max(nbytes, 16), np.uint8).fill_poison(), nbytes


def run_pre(x_host, fn, scale, base, weight, stream, with_y=True, with_q=True, transposed=False, iters=ITERS,
            partials=None, hc_eps=HC_EPS):
    """Runs dsv4_mhc_pre_bf16 on poisoned outputs with one spare token row each; returns host arrays.
    partials: a DeviceArray from dsv4_mhc_post_mix_bf16 (then fn is not passed and there is no workspace)."""
    n, _, dim = x_host.shape
    nb = dim // 128
    x = DeviceArray.from_numpy(x_host, stream)
    dev = [DeviceArray.from_numpy(a, stream) for a in (fn, scale, base, weight)]
    post = DeviceArray.empty((n + 1, HC), np.float32).fill_poison(stream)
    comb = DeviceArray.empty((n + 1, HC, HC), np.float32).fill_poison(stream)
    y = DeviceArray.empty((n + 1, dim), BF16).fill_poison(stream) if with_y else None
    q = DeviceArray.empty((n + 1, dim), E4M3).fill_poison(stream) if with_q else None
    shape, sst, ssb, view = scale_layout(n, nb, transposed)
    s = DeviceArray.empty(shape, np.float32).fill_poison(stream) if with_q else None
    ws, ws_bytes = workspace(n, dim) if partials is None else (None, 0)
    p = PreParams(post=post.ptr, comb=comb.ptr, y=y.ptr if y else 0, q=q.ptr if q else 0, scale=s.ptr if s else 0,
                  x=x.ptr, fn=dev[0].ptr if partials is None else 0, hc_scale=dev[1].ptr, hc_base=dev[2].ptr,
                  norm_weight=dev[3].ptr, partials=partials.ptr if partials else 0, workspace=ws.ptr if ws else 0,
                  workspace_bytes=ws_bytes, n_tokens=n, dim=dim, scale_stride_token=sst,
                  scale_stride_block=ssb, sinkhorn_iters=iters, hc_eps=hc_eps, mix_eps=NORM_EPS,
                  norm_eps=NORM_EPS)  # fmt: skip
    lib.dsv4_mhc_pre_bf16(p, stream)
    out = {"post": post.to_numpy(stream), "comb": comb.to_numpy(stream)}
    if with_y:
        out["y"] = y.to_numpy(stream)
    if with_q:
        out["q"] = q.to_numpy(stream)
        s_out = s.to_numpy(stream)
        if transposed:
            assert (s_out[:, n:].view(np.uint32) == 0xFFFFFFFF).all(), "hc_pre wrote into the scale padding"
        out["scale"] = view(s_out)
    for key, value in out.items():
        if key != "scale":
            assert (value[n:].view(np.uint8) == 0xFF).all(), f"hc_pre wrote past n_tokens rows of {key}"
            out[key] = value[:n]
    return out


def reference_pre(x_host, fn, scale, base, weight, iters=ITERS, hc_eps=HC_EPS):
    y, post, comb = ops.hc_pre(x_host.astype(np.float32), fn, scale, base, HC, iters, hc_eps, NORM_EPS)
    y_norm = ops.rms_norm(y, weight, NORM_EPS)
    q, s = quant.act_quant(y_norm, 128)
    return {"post": post, "comb": comb, "y": y_norm, "q": q, "scale": s,
            "y_bound": normed_bound(y, x_host, weight)}  # fmt: skip


def check_pre(out, ref, name):
    assert_close(out["post"], ref["post"], atol=POST_ATOL, rtol=0, name=f"{name} post")
    assert_close(out["comb"], ref["comb"], atol=COMB_ATOL, rtol=0, name=f"{name} comb")
    if "y" in out:
        assert_bf16_near_exact(out["y"], ref["y"], ref["y_bound"], f"{name} y", max_ulps=2, rare=RARE_Y)
    if "q" in out:
        if "y" in out:  # exact given the kernel's own normed values
            q_own, s_own = quant.act_quant(out["y"].astype(np.float32), 128)
            assert_bit_exact(out["q"], q_own, name=f"{name} q vs act_quant(own y)")
            assert_bit_exact(out["scale"], s_own, name=f"{name} scale vs act_quant(own y)")
        assert_quant_close(out["q"], out["scale"], ref["q"], ref["scale"], f"{name} q")


# ---- hc_pre ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", WIDTHS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("n_tokens", TOKENS)
def test_pre_matches_reference_at_v4_shapes(dim, n_tokens, rng, stream):
    x = random_stream(rng, n_tokens, dim)
    fn, scale, base = random_hc_weights(rng, dim)
    weight = random_norm_weight(rng, dim)
    out = run_pre(x, fn, scale, base, weight, stream, transposed=n_tokens % 2 == 1)
    check_pre(out, reference_pre(x, fn, scale, base, weight), f"hc_pre {n_tokens}x{dim}")


@pytest.mark.parametrize("dim, n_tokens", [(128, 5), (384, 33), (8192, 7), (1024, 300), (8192, 1025)])
def test_pre_odd_shapes(dim, n_tokens, rng, stream):
    x = random_stream(rng, n_tokens, dim)
    fn, scale, base = random_hc_weights(rng, dim)
    weight = random_norm_weight(rng, dim)
    out = run_pre(x, fn, scale, base, weight, stream)
    check_pre(out, reference_pre(x, fn, scale, base, weight), f"hc_pre {n_tokens}x{dim}")


def test_pre_optional_outputs_and_iterations(rng, stream):
    n, dim = 9, 4096
    x = random_stream(rng, n, dim)
    fn, scale, base = random_hc_weights(rng, dim)
    weight = random_norm_weight(rng, dim)
    for with_y, with_q, iters in [(False, True, ITERS), (True, False, 1), (False, False, 3)]:
        out = run_pre(x, fn, scale, base, weight, stream, with_y=with_y, with_q=with_q, iters=iters)
        check_pre(out, reference_pre(x, fn, scale, base, weight, iters), f"hc_pre y={with_y} q={with_q} it={iters}")


@pytest.mark.parametrize("hc_eps", [0.0, 1e-20, 1.5])
def test_pre_sinkhorn_with_hc_eps_outside_the_fast_division_range(hc_eps, rng, stream):
    """hc_eps outside [2^-40, 1]: the Sinkhorn divides with div.rn throughout (its entries may leave the range where
    the kernel's shorter division is exact); small and large batches take different kernels."""
    for n, dim in [(5, 4096), (1100, 1024)]:
        x = random_stream(rng, n, dim)
        fn, scale, base = random_hc_weights(rng, dim)
        weight = random_norm_weight(rng, dim)
        out = run_pre(x, fn, scale, base, weight, stream, hc_eps=hc_eps)
        ref = reference_pre(x, fn, scale, base, weight, hc_eps=hc_eps)
        check_pre(out, ref, f"hc_pre {n}x{dim} hc_eps={hc_eps}")


def test_pre_degenerate_rows(rng, stream):
    """Zero tokens, constant tokens, and tokens scaled by 2^-30 .. 2^30 (mix is scale-free, y and q follow)."""
    n, dim = 40, 7168
    x = random_stream(rng, n, dim, exponent_range=30).astype(np.float32)
    x[0] = 0.0
    x[1] = 1.5
    x[2, 2] = 0.0  # one zero copy
    x[3] = -(2.0**-30)
    x = x.astype(BF16)
    fn, scale, base = random_hc_weights(rng, dim)
    weight = random_norm_weight(rng, dim)
    out = run_pre(x, fn, scale, base, weight, stream)
    ref = reference_pre(x, fn, scale, base, weight)
    check_pre(out, ref, "hc_pre degenerate")
    assert (out["y"][0].astype(np.float32) == 0).all() and (out["q"][0].view(np.uint8) == 0).all()


@pytest.mark.parametrize("n", [300, 1100], ids=["block finalize", "warp finalize"])
def test_pre_is_deterministic(n, rng, stream):
    dim = 4096
    x = random_stream(rng, n, dim)
    fn, scale, base = random_hc_weights(rng, dim)
    weight = random_norm_weight(rng, dim)
    first = run_pre(x, fn, scale, base, weight, stream)
    second = run_pre(x, fn, scale, base, weight, stream)
    for key in first:
        assert_bit_exact(second[key], first[key], name=f"hc_pre rerun {key}")


def test_pre_zero_tokens_is_a_no_op(stream):
    post = DeviceArray.empty((1, HC), np.float32).fill_poison(stream)
    p = PreParams(post=post.ptr, comb=0, y=0, q=0, scale=0, x=0, fn=0, hc_scale=0, hc_base=0, norm_weight=0,
                  workspace=0, workspace_bytes=0, n_tokens=0, dim=4096, scale_stride_token=32, scale_stride_block=1,
                  sinkhorn_iters=ITERS, hc_eps=HC_EPS, mix_eps=NORM_EPS, norm_eps=NORM_EPS)  # fmt: skip
    assert lib.dsv4_mhc_pre_bf16(p, stream) == 0
    assert lib.dsv4_mhc_pre_workspace_bytes(0, 4096) == 0
    assert (post.to_numpy(stream).view(np.uint32) == 0xFFFFFFFF).all()


def test_workspace_bytes_hold_the_partials():
    for n in (1, 13, 64, 127, 128, 2048, 100000):
        for dim in (128, 4096, 7168, 8192):
            nbytes = lib.dsv4_mhc_pre_workspace_bytes(n, dim)
            splits, rest = divmod(nbytes, n * 25 * 4)  # rows of 24 mix sums and sum(x^2)
            assert rest == 0 and 1 <= splits <= 4 * dim // 128, (n, dim, nbytes)
            # hc_head's single-read launch (from 1024 tokens) keeps per token (in whole windows of 32) its pre
            # weights (a float4), per 128 dims a float4 of mix sums and two sums of squares, and its RMSNorm scale,
            # and two counters per window; its workspace also holds the two kernels' partials.
            head = lib.dsv4_mhc_head_workspace_bytes(n, dim)
            chunks = dim // 128
            single_read = -(-n // 32) * (32 * (16 + 24 * chunks + 4) + 8) if n >= 1024 else 0
            assert head >= max(nbytes, single_read), (n, dim, head)
    assert lib.dsv4_mhc_pre_workspace_bytes(5, 0) == 0


def pre_params(**changes):
    """Valid-looking params on fake aligned addresses (the checks run before any launch), with changes."""
    A = 0x7F0000000000
    fields = dict(post=A, comb=A, y=A, q=A, scale=A, x=A, fn=A, hc_scale=A, hc_base=A, norm_weight=A, workspace=A,
                  workspace_bytes=1 << 30, n_tokens=3, dim=4096, scale_stride_token=32, scale_stride_block=1,
                  sinkhorn_iters=ITERS, hc_eps=HC_EPS, mix_eps=NORM_EPS, norm_eps=NORM_EPS)  # fmt: skip
    fields.update(changes)
    return PreParams(**fields)


@pytest.mark.parametrize(
    "changes, status, message",
    [
        (dict(post=0), bindings.DSV4_ERR_NULL_POINTER, "post is NULL"),
        (dict(norm_weight=0), bindings.DSV4_ERR_NULL_POINTER, "norm_weight is NULL"),
        (dict(x=0x7F0000000008), bindings.DSV4_ERR_ALIGNMENT, "x = 0x[0-9a-f]+ is not 16-byte"),
        (dict(fn=0x7F0000000004), bindings.DSV4_ERR_ALIGNMENT, "fn = 0x[0-9a-f]+ is not 16-byte"),
        (dict(q=0x7F0000000004), bindings.DSV4_ERR_ALIGNMENT, "q = 0x[0-9a-f]+ is not 8-byte"),
        (dict(dim=4000), bindings.DSV4_ERR_SHAPE, "dim = 4000 is not a positive multiple of 128"),
        (dict(dim=8320), bindings.DSV4_ERR_SHAPE, "dim = 8320 .* at most 8192"),
        (dict(n_tokens=-1), bindings.DSV4_ERR_SHAPE, "n_tokens = -1"),
        (dict(sinkhorn_iters=0), bindings.DSV4_ERR_ARGUMENT, "sinkhorn_iters = 0"),
        (dict(hc_eps=float("nan")), bindings.DSV4_ERR_ARGUMENT, "hc_eps = nan"),
        (dict(norm_eps=-1.0), bindings.DSV4_ERR_ARGUMENT, "norm_eps = -1"),
        (dict(scale=0), bindings.DSV4_ERR_ARGUMENT, "q and scale must both be NULL or both be set"),
        (dict(scale_stride_token=16), bindings.DSV4_ERR_STRIDE, "scale strides .* overlap"),
        (dict(workspace_bytes=100), bindings.DSV4_ERR_WORKSPACE, "workspace_bytes = 100 <"),
        (dict(workspace=0x7F0000000008), bindings.DSV4_ERR_ALIGNMENT, "workspace = 0x[0-9a-f]+ is not 16-byte"),
    ],
)
def test_pre_bad_arguments_raise(changes, status, message):
    with pytest.raises(DSV4Error) as info:
        lib.dsv4_mhc_pre_bf16(pre_params(**changes), None)
    assert info.value.status == status, info.value
    assert re.search(f"^dsv4_mhc_pre_bf16: {message}", info.value.message), info.value.message


def test_params_structs_match_the_library():
    assert lib.dsv4_mhc_pre_params_size() == ctypes.sizeof(PreParams)
    assert lib.dsv4_mhc_head_params_size() == ctypes.sizeof(HeadParams)


# ---- hc_head -----------------------------------------------------------------------------------------------------


def run_head(x_host, fn, scale, base, weight, stream, partials=None, ws=None):
    """ws: (a DeviceArray, its bytes) to use as the workspace instead of a fresh poisoned one."""
    n, _, dim = x_host.shape
    x = DeviceArray.from_numpy(x_host, stream)
    dev = [DeviceArray.from_numpy(a, stream) for a in (fn, scale, base)]
    w = DeviceArray.from_numpy(weight, stream) if weight is not None else None
    y = DeviceArray.empty((n + 1, dim), BF16).fill_poison(stream)
    if ws is None:
        ws = workspace(n, dim, lib.dsv4_mhc_head_workspace_bytes) if partials is None else (None, 0)
    ws, ws_bytes = ws
    p = HeadParams(y=y.ptr, x=x.ptr, fn=dev[0].ptr if partials is None else 0, hc_scale=dev[1].ptr,
                   hc_base=dev[2].ptr, norm_weight=w.ptr if w else 0, partials=partials.ptr if partials else 0,
                   workspace=ws.ptr if ws else 0, workspace_bytes=ws_bytes, n_tokens=n, dim=dim, hc_eps=HC_EPS,
                   mix_eps=NORM_EPS, norm_eps=NORM_EPS)  # fmt: skip
    lib.dsv4_mhc_head_bf16(p, stream)
    out = y.to_numpy(stream)
    assert (out[n:].view(np.uint16) == 0xFFFF).all(), "hc_head wrote past n_tokens rows"
    return out[:n]


# hc_head's mix partials come from mix_small_kernel below 384 tokens (16-token tiles while their blocks fit the SMs,
# then 32: at V4-Pro 64 tokens take 112 blocks, one overlapped wave, and 65 take 168), from kernel 1 beyond; the odd
# dims give 1 to 64 chunks of 128. X is read once from 256 tokens at dims 6144 .. 7168 in steps of 512
# (cluster_head_kernel: 2048 here, 258 and 1030 below) and from 1024 tokens at the others (resident_head_kernel).
@pytest.mark.parametrize("dim", WIDTHS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("n_tokens", [1, 13, 64, 65, 127, 2048])
@pytest.mark.parametrize("with_norm", [False, True], ids=["raw", "normed"])
def test_head_matches_reference(dim, n_tokens, with_norm, rng, stream):
    check_head(dim, n_tokens, with_norm, rng, stream)


@pytest.mark.parametrize("dim, n_tokens", [(128, 5), (384, 33), (1152, 2), (8192, 7), (8192, 64), (128, 1100),
                                           (1152, 1030), (8192, 1025), (8192, 2050), (6144, 258), (7168, 1030)])
@pytest.mark.parametrize("with_norm", [False, True], ids=["raw", "normed"])
def test_head_odd_shapes(dim, n_tokens, with_norm, rng, stream):
    check_head(dim, n_tokens, with_norm, rng, stream)


def test_head_degenerate_rows(rng, stream):
    """Rows of zeros (mix 0 / rms of eps: pre = sigmoid(base) + eps, y = 0) and rows of one repeated value, next to
    random rows, at a small and a larger batch."""
    dim = 4096
    for n in (3, 100, 1030):
        x = random_stream(rng, n, dim)
        x[0] = 0
        x[1] = BF16(1.5)
        fn, scale, base = random_hc_weights(rng, dim, mix=HC)
        weight = random_norm_weight(rng, dim)
        out = run_head(x, fn, scale, base, weight, stream)
        raw = ops.hc_head(x.astype(np.float32), fn, scale, base, HC_EPS, NORM_EPS)
        ref, bound = ops.rms_norm(raw, weight, NORM_EPS), normed_bound(raw, x, weight)
        # The repeated row's y is one value: a rounding flip there covers the whole row, so it is held to the bound
        # alone; the random rows also to RARE_Y.
        assert_bf16_near_exact(out[:2], ref[:2], bound[:2], f"hc_head degenerate rows n={n}", max_ulps=2, rare=1.0)
        assert_bf16_near_exact(out[2:], ref[2:], bound[2:], f"hc_head beside them n={n}", max_ulps=2, rare=RARE_Y)
        assert (out[0].view(np.uint16) & 0x7FFF == 0).all(), "a zero row gives y = 0"


def check_head(dim, n_tokens, with_norm, rng, stream, ws=None):
    x = random_stream(rng, n_tokens, dim)
    fn, scale, base = random_hc_weights(rng, dim, mix=HC)
    weight = random_norm_weight(rng, dim) if with_norm else None
    out = run_head(x, fn, scale, base, weight, stream, ws=ws)
    ref = ops.hc_head(x.astype(np.float32), fn, scale, base, HC_EPS, NORM_EPS)
    bound = sum_bound(x)
    if with_norm:
        bound = normed_bound(ref, x, weight)
        ref = ops.rms_norm(ref, weight, NORM_EPS)
    assert_bf16_near_exact(out, ref, bound, f"hc_head {n_tokens}x{dim} {'normed' if with_norm else 'raw'}",
                           max_ulps=2 if with_norm else 1, rare=RARE_Y)


@pytest.mark.parametrize("dim", WIDTHS, ids=lambda d: f"dim{d}")
def test_head_single_read_with_a_used_workspace(dim, rng, stream):
    """The single read (from 1024 tokens) signals through its workspace: it must reset it itself, whatever a previous
    call or the caller left there (zeros, or another call's values: the fresh workspaces above are poisoned with the
    very bytes it resets to)."""
    n = 1100
    nbytes = lib.dsv4_mhc_head_workspace_bytes(n, dim)
    ws = DeviceArray.empty(nbytes, np.uint8).zero(stream)
    for _ in range(2):
        check_head(dim, n, True, rng, stream, ws=(ws, nbytes))


# Run by test_head_single_read_on_fewer_sms_than_assumed in a process with DSV4_SM_COUNT set: hc_head of the .npz
# inputs in argv[1], eagerly (its output saved to argv[2]), then under stream capture (its error's text printed).
_FEWER_SMS_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from test_mhc import BF16, HC_EPS, NORM_EPS, HeadParams, workspace
from pydsv4.cuda import DeviceArray, DSV4Error, Graph, lib, new_stream
stream = new_stream()
inputs = np.load(sys.argv[1])
x_host, fn, scale, base, weight = (inputs[k] for k in ("x", "fn", "scale", "base", "weight"))
n, _, dim = x_host.shape
x, fn, scale, base, weight = (DeviceArray.from_numpy(a, stream) for a in (x_host.view(BF16), fn, scale, base, weight))
ws, ws_bytes = workspace(n, dim, lib.dsv4_mhc_head_workspace_bytes)
y = DeviceArray.empty((n, dim), BF16).fill_poison(stream)
p = HeadParams(y=y.ptr, x=x.ptr, fn=fn.ptr, hc_scale=scale.ptr, hc_base=base.ptr, norm_weight=weight.ptr, partials=0,
               workspace=ws.ptr, workspace_bytes=ws_bytes, n_tokens=n, dim=dim, hc_eps=HC_EPS, mix_eps=NORM_EPS,
               norm_eps=NORM_EPS)
lib.dsv4_mhc_head_bf16(p, stream)
np.save(sys.argv[2], y.to_numpy(stream).view(np.uint16))
try:
    with Graph().capture(stream):
        lib.dsv4_mhc_head_bf16(p, stream)
except DSV4Error as error:
    print("captured:", error)
"""


def test_head_single_read_on_fewer_sms_than_assumed(rng, tmp_path):
    """The single read needs every CTA resident at once. Where the device holds fewer than it was sized for (MPS or a
    green context; here DSV4_SM_COUNT claims 4096 SMs), its cooperative launch is refused instead of waiting forever
    on CTAs that never start: an eager call runs the two kernels instead, and a captured one fails naming the cause."""
    dim, n = 4096, 1100  # (V4-Pro's width takes cluster_head_kernel, which needs no co-residency)
    x = random_stream(rng, n, dim)
    fn, scale, base = random_hc_weights(rng, dim, mix=HC)
    weight = random_norm_weight(rng, dim)
    np.savez(tmp_path / "inputs.npz", x=x.view(np.uint16), fn=fn, scale=scale, base=base, weight=weight)
    env = dict(os.environ, DSV4_SM_COUNT="4096")
    args = [str(tmp_path / "inputs.npz"), str(tmp_path / "y.npy"), str(Path(__file__).parent)]
    run = subprocess.run([sys.executable, "-c", _FEWER_SMS_SCRIPT, *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"hc_head with DSV4_SM_COUNT=4096 failed:\n{run.stderr[-3000:]}"
    raw = ops.hc_head(x.astype(np.float32), fn, scale, base, HC_EPS, NORM_EPS)
    ref, bound = ops.rms_norm(raw, weight, NORM_EPS), normed_bound(raw, x, weight)
    out = np.load(tmp_path / "y.npy").view(BF16)
    assert_bf16_near_exact(out, ref, bound, "hc_head on fewer SMs than assumed", max_ulps=2, rare=RARE_Y)
    assert re.search(r"captured: .*cannot hold the single read's \d+ CTAs at once .*DSV4_SM_COUNT", run.stdout), \
        run.stdout + run.stderr[-3000:]


def test_head_bad_arguments_raise():
    A = 0x7F0000000000
    base = dict(y=A, x=A, fn=A, hc_scale=A, hc_base=A, norm_weight=0, workspace=A, workspace_bytes=1 << 30,
                n_tokens=2, dim=7168, hc_eps=HC_EPS, mix_eps=NORM_EPS, norm_eps=NORM_EPS)  # fmt: skip
    for changes, status in [
        (dict(y=0), bindings.DSV4_ERR_NULL_POINTER),
        (dict(norm_weight=A + 4), bindings.DSV4_ERR_ALIGNMENT),
        (dict(dim=7100), bindings.DSV4_ERR_SHAPE),
        (dict(workspace_bytes=0), bindings.DSV4_ERR_WORKSPACE),
        (dict(mix_eps=float("inf")), bindings.DSV4_ERR_ARGUMENT),
    ]:
        with pytest.raises(DSV4Error) as info:
            lib.dsv4_mhc_head_bf16(HeadParams(**{**base, **changes}), None)
        assert info.value.status == status and info.value.message.startswith("dsv4_mhc_head_bf16: "), info.value


# ---- hc_post -----------------------------------------------------------------------------------------------------


def random_post_comb(rng, n):
    post = (2.0 / (1.0 + np.exp(-rng.standard_normal((n, HC))))).astype(np.float32)
    comb = ops.sinkhorn(rng.standard_normal((n, HC, HC)).astype(np.float32), ITERS, HC_EPS)
    return post, comb


def post_term_scale(x_host, f_host, post, comb):
    """T[t, j, :] = |post_j f| + sum_i |comb_ij x_i| of hc_post's fp32 sum."""
    x, f = np.abs(x_host.astype(np.float64)), np.abs(f_host.astype(np.float64))
    return np.abs(post)[:, :, None] * f[:, None, :] + np.einsum("sij,sid->sjd", np.abs(comb.astype(np.float64)), x)


def run_post(x_host, f_host, post, comb, stream, in_place=False):
    n, _, dim = x_host.shape
    x = DeviceArray.from_numpy(x_host, stream)
    f = DeviceArray.from_numpy(f_host, stream)
    p, c = DeviceArray.from_numpy(post, stream), DeviceArray.from_numpy(comb, stream)
    if in_place:
        lib.dsv4_mhc_post_bf16(x, x, f, p, c, n, dim, stream)
        return x.to_numpy(stream)
    out = DeviceArray.empty((n + 1, HC, dim), BF16).fill_poison(stream)
    lib.dsv4_mhc_post_bf16(out, x, f, p, c, n, dim, stream)
    result = out.to_numpy(stream)
    assert (result[n:].view(np.uint16) == 0xFFFF).all(), "hc_post wrote past n_tokens rows"
    return result[:n]


@pytest.mark.parametrize("dim", WIDTHS + [8, 1000], ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("n_tokens", [1, 13, 127, 2048])
def test_post_matches_reference(dim, n_tokens, rng, stream):
    x = random_stream(rng, n_tokens, dim)
    f = (rng.standard_normal((n_tokens, dim)) * 4).astype(BF16)
    post, comb = random_post_comb(rng, n_tokens)
    out = run_post(x, f, post, comb, stream, in_place=n_tokens == 13)
    ref = ops.hc_post(f.astype(np.float32), x.astype(np.float32), post, comb)
    assert_bf16_near_exact(out, ref, REL_POST * post_term_scale(x, f, post, comb), f"hc_post {n_tokens}x{dim}")


def test_post_extreme_magnitudes(rng, stream):
    n, dim = 16, 4096
    x = random_stream(rng, n, dim, exponent_range=60)
    f = random_stream(rng, n, dim, exponent_range=60)[:, 0]
    post, comb = random_post_comb(rng, n)
    out = run_post(x, f, post, comb, stream)
    ref = ops.hc_post(f.astype(np.float32), x.astype(np.float32), post, comb)
    assert_bf16_near_exact(out, ref, REL_POST * post_term_scale(x, f, post, comb), "hc_post extreme magnitudes")


def test_post_zero_tokens_and_bad_arguments(stream):
    A = 0x7F0000000000
    assert lib.dsv4_mhc_post_bf16(None, None, None, None, None, 0, 4096, stream) == 0
    cases = [
        ((A, A, A, A, 0, 2, 4096), bindings.DSV4_ERR_NULL_POINTER, "comb is NULL"),
        ((A, A, A + 8, A, A, 2, 4096), bindings.DSV4_ERR_ALIGNMENT, "f = 0x[0-9a-f]+ is not 16-byte"),
        ((A, A, A, A + 4, A, 2, 4096), bindings.DSV4_ERR_ALIGNMENT, "post = 0x[0-9a-f]+ is not 16-byte"),
        ((A, A, A, A, A, 2, 4092), bindings.DSV4_ERR_SHAPE, "dim = 4092"),
        ((A, A, A, A, A, -3, 4096), bindings.DSV4_ERR_SHAPE, "n_tokens = -3"),
        ((A + 16, A, A, A, A, 2, 4096), bindings.DSV4_ERR_ARGUMENT, "out overlaps x"),
    ]
    for args, status, message in cases:
        with pytest.raises(DSV4Error, match=message) as info:
            lib.dsv4_mhc_post_bf16(*args, None)
        assert info.value.status == status, info.value


# ---- hc_post fused with the next mix product ---------------------------------------------------------------------
# The stream it writes is hc_post's, bit for bit (the same fp32 fma chain); its partials, handed to hc_pre /
# hc_head, must give what those compute from the stream alone, within the same tolerances (another K split of the
# same tf32-split products).


def run_post_mix(x_host, f_host, post, comb, fn, stream, in_place=False):
    """dsv4_mhc_post_mix_bf16 on poisoned outputs; returns (new stream on the host, partials DeviceArray)."""
    n, _, dim = x_host.shape
    x = DeviceArray.from_numpy(x_host, stream)
    dev = [DeviceArray.from_numpy(a, stream) for a in (f_host, post, comb, fn)]
    out = x if in_place else DeviceArray.empty((n + 1, HC, dim), BF16).fill_poison(stream)
    size = (dim // 128) * n * (fn.shape[0] + 1)  # [splits, n, the mix sums then sum(out^2)]
    assert lib.dsv4_mhc_post_mix_partials_bytes(n, dim) >= size * 4
    partials = DeviceArray.empty((size + 32,), np.float32).fill_poison(stream)
    p = PostMixParams(out=out.ptr, partials=partials.ptr, x=x.ptr, f=dev[0].ptr, post=dev[1].ptr, comb=dev[2].ptr,
                      fn=dev[3].ptr, n_tokens=n, dim=dim, num_mix=fn.shape[0])  # fmt: skip
    lib.dsv4_mhc_post_mix_bf16(p, stream)
    result = out.to_numpy(stream)
    if not in_place:
        assert (result[n:].view(np.uint16) == 0xFFFF).all(), "post_mix wrote past n_tokens rows of out"
    written = partials.to_numpy(stream).view(np.uint32) != 0xFFFFFFFF
    assert written[:size].all(), "post_mix left partial slots of its n_tokens unwritten"
    assert not written[size:].any(), "post_mix wrote past its partials"
    return result[:n], partials


@pytest.mark.parametrize("dim", WIDTHS + [384], ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("n_tokens", [1, 13, 64, 95, 96, 2048])
def test_post_mix_then_pre_matches_reference(dim, n_tokens, rng, stream):
    x = random_stream(rng, n_tokens, dim)
    f = (rng.standard_normal((n_tokens, dim)) * 4).astype(BF16)
    post, comb = random_post_comb(rng, n_tokens)
    fn, scale, base = random_hc_weights(rng, dim)
    weight = random_norm_weight(rng, dim)
    stream_new, partials = run_post_mix(x, f, post, comb, fn, stream, in_place=n_tokens == 13)
    assert_bit_exact(stream_new, run_post(x, f, post, comb, stream), name=f"post_mix {n_tokens}x{dim} vs hc_post")
    out = run_pre(stream_new, fn, scale, base, weight, stream, partials=partials)
    check_pre(out, reference_pre(stream_new, fn, scale, base, weight), f"hc_pre from post_mix {n_tokens}x{dim}")


@pytest.mark.parametrize("dim", WIDTHS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("n_tokens", [1, 127, 1500])
def test_post_mix_then_head_matches_reference(dim, n_tokens, rng, stream):
    x = random_stream(rng, n_tokens, dim)
    f = (rng.standard_normal((n_tokens, dim)) * 4).astype(BF16)
    post, comb = random_post_comb(rng, n_tokens)
    fn, scale, base = random_hc_weights(rng, dim, mix=HC)
    weight = random_norm_weight(rng, dim)
    stream_new, partials = run_post_mix(x, f, post, comb, fn, stream)
    out = run_head(stream_new, fn, scale, base, weight, stream, partials=partials)
    raw = ops.hc_head(stream_new.astype(np.float32), fn, scale, base, HC_EPS, NORM_EPS)
    assert_bf16_near_exact(out, ops.rms_norm(raw, weight, NORM_EPS), normed_bound(raw, stream_new, weight),
                           f"hc_head from post_mix {n_tokens}x{dim}", max_ulps=2, rare=RARE_Y)


@pytest.mark.parametrize("n_tokens", [1, 64, 1000])
def test_layer_chain_queued_without_host_sync_matches_synchronized_calls(n_tokens, rng, stream):
    """Kernels start before the previous kernel on the stream ends (programmatic dependent launch, cuda/common.cuh)
    and must wait for it before touching memory. Three layers of mHC (post_mix -> hc_pre from its partials, whose y
    is the next post_mix's f), then a standalone hc_head, with X in two buffers used in turn: each call reads what
    the one before wrote and overwrites what it read (post / comb, partials, X). Queued without a host sync they give
    the same bits as with a sync after every call."""
    dim = 4096
    x0 = random_stream(rng, n_tokens, dim)
    f0 = (rng.standard_normal((n_tokens, dim)) * 4).astype(BF16)
    post0, comb0 = random_post_comb(rng, n_tokens)
    fn, scale, base = random_hc_weights(rng, dim)
    head_fn, head_scale, head_base = random_hc_weights(rng, dim, mix=HC)
    weight = random_norm_weight(rng, dim)
    constants = [DeviceArray.from_numpy(a, stream) for a in (fn, scale, base, head_fn, head_scale, head_base, weight)]
    fn_d, scale_d, base_d, head_fn_d, head_scale_d, head_base_d, weight_d = constants

    def run(sync_each_call):
        xs = [DeviceArray.from_numpy(x0, stream), DeviceArray.empty((n_tokens, HC, dim), BF16).fill_poison(stream)]
        f, post, comb = (DeviceArray.from_numpy(a, stream) for a in (f0, post0, comb0))
        partials = DeviceArray.empty(lib.dsv4_mhc_post_mix_partials_bytes(n_tokens, dim), np.uint8)
        q = DeviceArray.empty((n_tokens, dim), E4M3)
        s = DeviceArray.empty((n_tokens, dim // 128), np.float32)
        head_y = DeviceArray.empty((n_tokens, dim), BF16)
        ws, ws_bytes = workspace(n_tokens, dim, lib.dsv4_mhc_head_workspace_bytes)
        calls = []
        for layer in range(3):
            x_in, x_out = xs[layer % 2], xs[1 - layer % 2]
            calls.append(lambda x_in=x_in, x_out=x_out: lib.dsv4_mhc_post_mix_bf16(PostMixParams(
                out=x_out.ptr, partials=partials.ptr, x=x_in.ptr, f=f.ptr, post=post.ptr, comb=comb.ptr,
                fn=fn_d.ptr, n_tokens=n_tokens, dim=dim, num_mix=MIX), stream))  # fmt: skip
            calls.append(lambda x_out=x_out: lib.dsv4_mhc_pre_bf16(PreParams(
                post=post.ptr, comb=comb.ptr, y=f.ptr, q=q.ptr, scale=s.ptr, x=x_out.ptr, fn=0, hc_scale=scale_d.ptr,
                hc_base=base_d.ptr, norm_weight=weight_d.ptr, partials=partials.ptr, workspace=0, workspace_bytes=0,
                n_tokens=n_tokens, dim=dim, scale_stride_token=dim // 128, scale_stride_block=1, sinkhorn_iters=ITERS,
                hc_eps=HC_EPS, mix_eps=NORM_EPS, norm_eps=NORM_EPS), stream))  # fmt: skip
        calls.append(lambda: lib.dsv4_mhc_head_bf16(HeadParams(
            y=head_y.ptr, x=xs[1].ptr, fn=head_fn_d.ptr, hc_scale=head_scale_d.ptr, hc_base=head_base_d.ptr,
            norm_weight=weight_d.ptr, partials=0, workspace=ws.ptr, workspace_bytes=ws_bytes, n_tokens=n_tokens,
            dim=dim, hc_eps=HC_EPS, mix_eps=NORM_EPS, norm_eps=NORM_EPS), stream))  # fmt: skip
        for call in calls:
            call()
            if sync_each_call:
                stream.sync()
        outputs = {"x after layer 1": xs[0], "x after layer 2": xs[1], "y": f, "post": post, "comb": comb, "q": q,
                   "scale": s, "hc_head y": head_y}
        return {name: a.to_numpy(stream) for name, a in outputs.items()}

    queued, synced = run(False), run(True)
    for name in queued:
        assert_bit_exact(queued[name], synced[name], name=f"{name}, {n_tokens} tokens queued vs synchronized")


def test_post_mix_partials_bytes():
    assert lib.dsv4_mhc_post_mix_partials_bytes(3, 7168) == 3 * 56 * 25 * 4  # rows of 24 mix sums and sum(x^2)
    for n, dim in [(0, 4096), (5, 0), (5, 200), (5, 8320)]:  # empty, or dim not a multiple of 128 in (0, 8192]
        assert lib.dsv4_mhc_post_mix_partials_bytes(n, dim) == 0, (n, dim)


def test_post_mix_bad_arguments_raise():
    A = 0x7F0000000000
    base = dict(out=A, partials=A, x=A + (1 << 30), f=A, post=A, comb=A, fn=A, n_tokens=2, dim=4096, num_mix=24)
    assert lib.dsv4_mhc_post_mix_bf16(PostMixParams(**{**base, "n_tokens": 0, "out": 0}), None) == 0
    for changes, status, message in [
        (dict(partials=0), bindings.DSV4_ERR_NULL_POINTER, "partials is NULL"),
        (dict(fn=A + 4), bindings.DSV4_ERR_ALIGNMENT, "fn = 0x[0-9a-f]+ is not 16-byte"),
        (dict(dim=4100), bindings.DSV4_ERR_SHAPE, "dim = 4100 is not a positive multiple of 128"),
        (dict(num_mix=8), bindings.DSV4_ERR_ARGUMENT, "num_mix = 8"),
        (dict(out=A + (1 << 30) + 16), bindings.DSV4_ERR_ARGUMENT, "out overlaps x"),
    ]:
        with pytest.raises(DSV4Error, match=message) as info:
            lib.dsv4_mhc_post_mix_bf16(PostMixParams(**{**base, **changes}), None)
        assert info.value.status == status and info.value.message.startswith("dsv4_mhc_post_mix_bf16: "), info.value
    with pytest.raises(DSV4Error, match="partials = 0x[0-9a-f]+ is not 16-byte") as info:
        lib.dsv4_mhc_pre_bf16(pre_params(partials=A + 4), None)
    assert info.value.status == bindings.DSV4_ERR_ALIGNMENT
