"""Bindings of cuda/mhc.cu (build/libdsv4_mhc.so); prototypes in cuda/dsv4.h, section "mhc".

Manifold-constrained hyper-connections: hc_pre fused with RMSNorm + FP8 quantization, hc_post, hc_head, and
hc_post fused with the next hc_pre's / hc_head's mix product (post_mix), whose partials let those only finalize.
Bytes each entry moves (the benchmark's roofline), n tokens of width d, K = 4d, S = splits of the mix product
(the workspace holds n * S rows of M + 1 fp32 partials, M = 24 mix sums (hc_pre) or 4 (hc_head) and sum(x^2):
S = dsv4_mhc_pre_workspace_bytes(n, d) / (100 n); post_mix's partials have S = d / 128; P = (M + 1) * 4 bytes a row):
    pre_bf16:   24*K*4 (fn) + 2 * n*K*2 (x, read twice: once by the mix product, once by the finalize)
                + 2 * n*S*P (partials written and read) + n*4*4 + n*16*4 (post, comb) + d*4 (norm weight)
                [+ n*d*2 (y)] [+ n*d + n*(d/128)*4 (q, scales)]
                with partials given: n*K*2 (x, once) + n*S*P (partials read) + the same outputs
    head_bf16:  4*K*4 (fn) + 2 * n*K*2 (x) + 2 * n*S*P + n*d*2 (y) [+ d*4 (norm weight)]; from 1024 tokens
                where 3 CTAs per 128 dims fit the SMs, x is read once
    post_bf16:  n*d*2 (f) + n*K*2 (x) + n*4*4 + n*16*4 (post, comb) + n*K*2 (out)
    post_mix:   post_bf16's bytes + M*K*4 (fn, read once per block) + n*S*P (partials)
The minimum an hc_pre / hc_head must move reads x once: subtract n*K*2 and the partials for that count.
"""

import ctypes

ENTRIES = {
    "dsv4_mhc_pre_workspace_bytes": "n_tokens: i64, dim: i64 -> size",
    "dsv4_mhc_head_workspace_bytes": "n_tokens: i64, dim: i64 -> size",
    "dsv4_mhc_pre_params_size": "-> size",
    "dsv4_mhc_pre_bf16": "params: *dsv4_mhc_pre_params, stream: stream",
    "dsv4_mhc_head_params_size": "-> size",
    "dsv4_mhc_head_bf16": "params: *dsv4_mhc_head_params, stream: stream",
    "dsv4_mhc_post_bf16": (
        "out: ptr, x: ptr, f: ptr, post: ptr, comb: ptr, n_tokens: i64, dim: i64, stream: stream"
    ),
    "dsv4_mhc_post_mix_params_size": "-> size",
    "dsv4_mhc_post_mix_partials_bytes": "n_tokens: i64, dim: i64 -> size",
    "dsv4_mhc_post_mix_bf16": "params: *dsv4_mhc_post_mix_params, stream: stream",
}


class PreParams(ctypes.Structure):
    """dsv4_mhc_pre_params: pointers as int addresses (DeviceArray.ptr); y, q and scale may be 0 (NULL)."""

    _fields_ = [
        ("post", ctypes.c_void_p),
        ("comb", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("q", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("x", ctypes.c_void_p),
        ("fn", ctypes.c_void_p),
        ("hc_scale", ctypes.c_void_p),
        ("hc_base", ctypes.c_void_p),
        ("norm_weight", ctypes.c_void_p),
        ("partials", ctypes.c_void_p),
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_size_t),
        ("n_tokens", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("scale_stride_token", ctypes.c_int64),
        ("scale_stride_block", ctypes.c_int64),
        ("sinkhorn_iters", ctypes.c_int64),
        ("hc_eps", ctypes.c_float),
        ("mix_eps", ctypes.c_float),
        ("norm_eps", ctypes.c_float),
    ]


class HeadParams(ctypes.Structure):
    """dsv4_mhc_head_params: pointers as int addresses; norm_weight may be 0 (NULL: no final RMSNorm)."""

    _fields_ = [
        ("y", ctypes.c_void_p),
        ("x", ctypes.c_void_p),
        ("fn", ctypes.c_void_p),
        ("hc_scale", ctypes.c_void_p),
        ("hc_base", ctypes.c_void_p),
        ("norm_weight", ctypes.c_void_p),
        ("partials", ctypes.c_void_p),
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_size_t),
        ("n_tokens", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("hc_eps", ctypes.c_float),
        ("mix_eps", ctypes.c_float),
        ("norm_eps", ctypes.c_float),
    ]


class PostMixParams(ctypes.Structure):
    """dsv4_mhc_post_mix_params: pointers as int addresses; out may equal x (in place)."""

    _fields_ = [
        ("out", ctypes.c_void_p),
        ("partials", ctypes.c_void_p),
        ("x", ctypes.c_void_p),
        ("f", ctypes.c_void_p),
        ("post", ctypes.c_void_p),
        ("comb", ctypes.c_void_p),
        ("fn", ctypes.c_void_p),
        ("n_tokens", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("num_mix", ctypes.c_int64),
    ]


PARAMS = {
    "dsv4_mhc_pre_params": PreParams,
    "dsv4_mhc_head_params": HeadParams,
    "dsv4_mhc_post_mix_params": PostMixParams,
}
