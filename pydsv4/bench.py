"""`python -m pydsv4.bench ops`: every kernel entry's time, achieved bandwidth and roofline fraction.

    python -m pydsv4.bench ops [--widths flash,pro] [--tokens 1,64,4096] [--only NAME] [--json FILE] [--no-peer]

Bytes are the fewest the op must move (each input read once, each output written once); the roofline is the
device's copy bandwidth measured in the same run (large device-to-device copies, bytes read plus written). For
small problems, where launch latency and not bandwidth sets the floor, each row also shows a device-to-device
copy of the same bytes timed the same way ("copy us") and its ratio to the op ("copy/ours": 1.0 = as fast as
merely moving the bytes).
Each op is timed as a CUDA graph of many launches replayed several times (median), cycling over enough input
sets that they do not fit in L2, so the numbers are HBM numbers, not cache numbers (small-batch kernels warm L2 with
their inputs while the launch before runs, as they would behind the kernel that wrote them in a forward pass: their
DRAM latency then overlaps that launch, their bytes still come from HBM). Where torch is importable
(on the GPU machine only; never a dependency) the matching torch op is timed as the peer, the same way (a CUDA
graph over rotating sets): rms_norm for RMSNorm, index_select for the embedding gather, argmax for greedy sampling,
and for temperature / top-k / top-p sampling vLLM's torch-native sampler (peer_sample: what vLLM runs on CUDA
without FlashInfer). The other entries (FP8 block quantization, RoPE, mHC) have no torch op of their own; a chain
of eager elementwise ops would be a strawman, not a peer.
Consecutive launches overlap through programmatic dependent launch, as in a forward pass (the copies do not);
DSV4_PDL=0 times every kernel launched plainly.
"""
import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import ml_dtypes
import numpy as np

WIDTHS = {  # model width, attention heads (head_dim 512)
    "flash": (4096, 64),
    "pro": (7168, 128),
}
HC = 4
VOCAB = 129280
L2_FOOTPRINT = 200 << 20      # cycle over >= 4x the H100's 50 MB L2
MAX_SETS = 64
GRAPH_LAUNCHES = 64           # launches per captured graph
REPLAYS = 15
MAX_SAMPLE_ROWS = 1024        # sampling's batches: the rows of one decode step (at Flash vocab, 529 MB of logits)


@dataclass
class Case:
    """One timed configuration of one entry.

    make(set_index) allocates one independent input/output set and returns `launch(stream)` for it;
    peer(set_index), optional, does the same with torch and returns a callable taking a torch stream."""
    op: str
    width: str
    tokens: int
    bytes_moved: int
    make: Callable[[int], Callable]
    peer: Optional[Callable[[int], Callable]] = None
    note: str = ""
    results: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- helpers
def _rng(seed):
    return np.random.default_rng(seed)


def _bf16(rng, shape, scale=1.0):
    return (rng.standard_normal(shape, np.float32) * scale).astype(ml_dtypes.bfloat16)


def _upload(a):
    from pydsv4.cuda import DeviceArray
    return DeviceArray.from_numpy(np.ascontiguousarray(a))


def _empty(shape, dtype):
    from pydsv4.cuda import DeviceArray
    return DeviceArray.empty(shape, dtype)


def _torch():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- cases
def embed_cases(width, d, H, tokens):
    from pydsv4.cuda import lib
    table = None

    def make(i):
        nonlocal table
        if table is None:
            table = _upload(_bf16(_rng(0), (VOCAB, d)))
        ids = _upload(_rng(i).integers(0, VOCAB, tokens).astype(np.int32))
        out = _empty((tokens, HC, d), ml_dtypes.bfloat16)
        return lambda s: lib.dsv4_embed_gather_bf16(out, table, ids, tokens, VOCAB, d, HC, s)

    torch = _torch()
    peer_table = None

    def peer(i):  # one gather of each id's row hc times (the rows after the first come from L2)
        nonlocal peer_table
        if peer_table is None:
            peer_table = torch.randn(VOCAB, d, device="cuda", dtype=torch.bfloat16)
        ids = torch.randint(0, VOCAB, (tokens,), device="cuda").repeat_interleave(HC)
        out = torch.empty(tokens * HC, d, device="cuda", dtype=torch.bfloat16)
        return lambda: torch.index_select(peer_table, 0, ids, out=out)

    # rows read once, hc copies written
    return [Case("embed_gather_bf16", width, tokens, tokens * d * 2 + tokens * HC * d * 2 + tokens * 4, make,
                 peer if torch else None)]


def norm_cases(width, d, H, tokens):
    from pydsv4.cuda import lib
    from pydsv4.cuda.families.norm import ActQuantParams, RmsQuantParams
    torch = _torch()
    w = _upload(_rng(1).uniform(0.5, 1.5, d).astype(np.float32))

    def make_rms(i):
        x = _upload(_bf16(_rng(i), (tokens, d)))
        y = _empty((tokens, d), ml_dtypes.bfloat16)
        return lambda s: lib.dsv4_norm_rms_bf16(y, x, w, tokens, d, d, d, 1e-6, s)

    def peer_rms(i):
        x = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16)
        wt = torch.rand(d, device="cuda", dtype=torch.bfloat16)
        return lambda: torch.nn.functional.rms_norm(x, (d,), wt, 1e-6)

    def make_rms_quant(i):
        x = _upload(_bf16(_rng(i), (tokens, d)))
        q = _empty((tokens, d), ml_dtypes.float8_e4m3fn)
        sc = _empty((tokens, d // 128), np.float32)
        p = RmsQuantParams(q.ptr, sc.ptr, 0, x.ptr, w.ptr, tokens, d, d, d // 128, 1, 0, d, 1e-6)
        return lambda s, keep=(x, q, sc): lib.dsv4_norm_rms_quant_e4m3(p, s)

    def make_act_quant(block):
        def make(i):
            x = _upload(_bf16(_rng(i), (tokens, d)))
            q = _empty((tokens, d), ml_dtypes.float8_e4m3fn)
            sc = _empty((tokens, d // block), np.float32)
            p = ActQuantParams(q.ptr, sc.ptr, x.ptr, tokens, d, d, d // block, 1, d, block)
            return lambda s, keep=(x, q, sc): lib.dsv4_norm_act_quant_e4m3(p, s)
        return make

    io = tokens * d * 2
    return [
        Case("norm_rms_bf16", width, tokens, 2 * io + d * 4, make_rms, peer_rms if torch else None),
        Case("norm_rms_quant_e4m3", width, tokens, io + d * 4 + tokens * d + tokens * d // 128 * 4, make_rms_quant),
        Case("norm_act_quant_e4m3/128", width, tokens, io + tokens * d + tokens * d // 128 * 4, make_act_quant(128)),
        Case("norm_act_quant_e4m3/64", width, tokens, io + tokens * d + tokens * d // 64 * 4, make_act_quant(64)),
    ]


def rope_cases(width, d, H, tokens):
    from pydsv4.cuda import lib
    from pydsv4.cuda.families.rope import KvParams
    from pydsv4.reference import ops
    positions_max = 65536
    table = _empty((positions_max, 32, 2), np.float32)
    freqs = _upload(ops.rope_freqs(64, 160000, 65536, 16, 32, 1))
    lib.dsv4_rope_table_f32(table, freqs, positions_max, 32, None)
    kv_w = _upload(_rng(2).uniform(0.5, 1.5, 512).astype(np.float32))

    def positions(i):
        return _upload(_rng(100 + i).integers(0, positions_max, tokens).astype(np.int32))

    def make_q(i):
        q = _upload(_bf16(_rng(i), (tokens, H * 512)))
        pos = positions(i)
        return lambda s: lib.dsv4_rope_q_norm_rope_bf16(q, pos, table, tokens, H, positions_max, H * 512, 1e-6, s)

    def make_inverse(i):
        o = _upload(_bf16(_rng(i), (tokens, H * 512)))
        pos = positions(i)
        return lambda s: lib.dsv4_rope_inverse_bf16(o, pos, table, tokens, H, positions_max, H * 512, s)

    def make_kv(i):
        kv = _upload(_bf16(_rng(i), (tokens, 512)))
        pos = positions(i)
        slots = _upload(np.arange(tokens, dtype=np.int32))
        cache = _empty((tokens, 584), np.uint8)
        p = KvParams(cache.ptr, kv.ptr, kv_w.ptr, pos.ptr, slots.ptr, table.ptr, tokens, tokens, 1, 584, 512,
                     positions_max, 1e-6)
        return lambda s, keep=(kv, pos, slots, cache): lib.dsv4_rope_kv_fp8(p, s)

    q_bytes = tokens * H * 512 * 2
    table_bytes = tokens * 32 * 2 * 4 + tokens * 4
    return [
        Case("rope_q_norm_rope_bf16", width, tokens, 2 * q_bytes + table_bytes, make_q),
        Case("rope_inverse_bf16", width, tokens, 2 * tokens * H * 64 * 2 + table_bytes, make_inverse,
             note="touches the 64 rope dims of each head only"),
        Case("rope_kv_fp8", width, tokens, tokens * 512 * 2 + 512 * 4 + tokens * 584 + table_bytes + tokens * 4,
             make_kv),
    ]


def mhc_cases(width, d, H, tokens):
    from pydsv4.cuda import lib
    from pydsv4.cuda.families.mhc import HeadParams, PostMixParams, PreParams
    K = HC * d
    rng = _rng(3)
    fn = _upload(rng.standard_normal((24, K), np.float32) * np.float32(0.01))
    head_fn = _upload(rng.standard_normal((HC, K), np.float32) * np.float32(0.01))
    hc_scale = _upload(np.array([0.5, 0.7, 0.9], np.float32))
    hc_base = _upload(rng.standard_normal(24).astype(np.float32))
    norm_w = _upload(rng.uniform(0.5, 1.5, d).astype(np.float32))

    def pre_params(x, post, comb, y, q, sc, ws, ws_bytes, partials):
        return PreParams(post.ptr, comb.ptr, y.ptr, q.ptr, sc.ptr, x.ptr, fn.ptr, hc_scale.ptr, hc_base.ptr, norm_w.ptr,
                         partials.ptr if partials else 0, ws.ptr if ws else 0, ws_bytes, tokens, d, d // 128, 1, 20,
                         1e-6, 1e-6, 1e-6)

    def pre_outputs():
        return (_empty((tokens, HC), np.float32), _empty((tokens, HC, HC), np.float32),
                _empty((tokens, d), ml_dtypes.bfloat16), _empty((tokens, d), ml_dtypes.float8_e4m3fn),
                _empty((tokens, d // 128), np.float32))

    def make_pre(i):
        x = _upload(_bf16(_rng(i), (tokens, HC, d)))
        post, comb, y, q, sc = pre_outputs()
        ws_bytes = lib.dsv4_mhc_pre_workspace_bytes(tokens, d)
        ws = _empty(max(ws_bytes, 16), np.uint8)
        p = pre_params(x, post, comb, y, q, sc, ws, ws_bytes, None)
        return lambda s, keep=(x, post, comb, y, q, sc, ws): lib.dsv4_mhc_pre_bf16(p, s)

    def post_mix_params(x, f, post, comb, out, partials, mix_fn, num_mix):
        return PostMixParams(out.ptr, partials.ptr, x.ptr, f.ptr, post.ptr, comb.ptr, mix_fn.ptr, tokens, d, num_mix)

    def post_inputs(i):
        x = _upload(_bf16(_rng(i), (tokens, HC, d)))
        f = _upload(_bf16(_rng(i + 1000), (tokens, d)))
        post = _upload(_rng(i).uniform(0, 2, (tokens, HC)).astype(np.float32))
        comb = _upload(_rng(i).uniform(0, 0.5, (tokens, HC, HC)).astype(np.float32))
        return x, f, post, comb

    def make_post_mix(i):
        x, f, post, comb = post_inputs(i)
        out = _empty((tokens, HC, d), ml_dtypes.bfloat16)
        partials = _empty((max(lib.dsv4_mhc_post_mix_partials_bytes(tokens, d), 16),), np.uint8)
        p = post_mix_params(x, f, post, comb, out, partials, fn, 24)
        return lambda s, keep=(x, f, post, comb, out, partials): lib.dsv4_mhc_post_mix_bf16(p, s)

    def make_pre_given(i):
        """hc_pre on the stream and partials a post_mix just wrote (the layer's path)."""
        from pydsv4.cuda import runtime
        x_old, f, post_in, comb_in = post_inputs(i)
        x = _empty((tokens, HC, d), ml_dtypes.bfloat16)
        partials = _empty((max(lib.dsv4_mhc_post_mix_partials_bytes(tokens, d), 16),), np.uint8)
        stream = runtime.new_stream()
        lib.dsv4_mhc_post_mix_bf16(post_mix_params(x_old, f, post_in, comb_in, x, partials, fn, 24), stream)
        runtime.stream_synchronize(stream)
        post, comb, y, q, sc = pre_outputs()
        p = pre_params(x, post, comb, y, q, sc, None, 0, partials)
        return lambda s, keep=(x, partials, post, comb, y, q, sc): lib.dsv4_mhc_pre_bf16(p, s)

    def make_head(i):
        x = _upload(_bf16(_rng(i), (tokens, HC, d)))
        y = _empty((tokens, d), ml_dtypes.bfloat16)
        ws_bytes = lib.dsv4_mhc_head_workspace_bytes(tokens, d)
        ws = _empty(max(ws_bytes, 16), np.uint8)
        p = HeadParams(y.ptr, x.ptr, head_fn.ptr, hc_scale.ptr, hc_base.ptr, norm_w.ptr, 0, ws.ptr, ws_bytes, tokens,
                       d, 1e-6, 1e-6, 1e-6)
        return lambda s, keep=(x, y, ws): lib.dsv4_mhc_head_bf16(p, s)

    def make_post(i):
        x, f, post, comb = post_inputs(i)
        out = _empty((tokens, HC, d), ml_dtypes.bfloat16)
        return lambda s, keep=(x, f, post, comb, out): lib.dsv4_mhc_post_bf16(out, x, f, post, comb, tokens, d, s)

    x_bytes = tokens * K * 2
    mixing = tokens * (HC + HC * HC) * 4
    pre_out = mixing + d * 4 + tokens * d * 2 + tokens * d + tokens * d // 128 * 4  # + norm weight; y, q, scales
    post_bytes = tokens * d * 2 + 2 * x_bytes + mixing
    min_partials = tokens * 25 * 4  # the 24 mix sums and sum(x^2) of each token, once
    return [
        # minimum: fn and x read once, post/comb, y and FP8 q + scales written (the kernel reads x twice)
        Case("mhc_pre_bf16(+norm+fp8)", width, tokens, 24 * K * 4 + x_bytes + pre_out, make_pre,
             note="reads x twice (mix product, then finalize); bytes count it once"),
        Case("mhc_head_bf16(+norm)", width, tokens, HC * K * 4 + x_bytes + d * 4 + tokens * d * 2, make_head,
             note="reads x twice (once from 1024 tokens, from 256 at V4-Pro: one launch); bytes count it once"),
        Case("mhc_post_bf16", width, tokens, post_bytes, make_post),
        # the layer's path: hc_post fused with the next hc_pre's mix, then hc_pre finalizing from its partials
        Case("mhc_post_mix_bf16(24)", width, tokens, post_bytes + 24 * K * 4 + min_partials, make_post_mix,
             note=f"writes {d // 128} partial rows of 100 B per token; bytes count one"),
        Case("mhc_pre_bf16(partials given)", width, tokens, x_bytes + min_partials + pre_out, make_pre_given,
             note=f"reads {d // 128} partial rows of 100 B per token; bytes count one"),
    ]


def sample_cases(width, d, H, tokens):
    """`tokens` is the batch (rows of VOCAB logits), up to MAX_SAMPLE_ROWS: one decode step's rows. Small batches are
    latency-bound, large ones bandwidth-bound (a step of many sequences samples every row)."""
    from pydsv4.cuda import lib
    if width != "flash" or tokens > MAX_SAMPLE_ROWS:
        return []

    temperature = 0.8

    def make(greedy, top_k=0, top_p=1.0):
        def make_set(i):
            logits = _upload(_rng(i).standard_normal((tokens, VOCAB), np.float32) * np.float32(3))
            out = _empty(tokens, np.int32)
            if greedy:
                return lambda s: lib.dsv4_sample_greedy_f32(out, logits, tokens, VOCAB, VOCAB, s)
            return lambda s: lib.dsv4_sample_tokens_f32(out, logits, tokens, VOCAB, VOCAB, temperature, top_k, top_p,
                                                        1234, i, s)
        return make_set

    torch = _torch()

    def peer(greedy, top_k=0, top_p=1.0):
        def make_set(i):
            logits = torch.randn(tokens, VOCAB, device="cuda") * 3
            if greedy:
                return lambda: torch.argmax(logits, dim=-1)
            return lambda: peer_sample(torch, logits, temperature, top_k, top_p)
        return make_set if torch else None

    nbytes = tokens * VOCAB * 4 + tokens * 4
    return [Case("sample_greedy_f32", "vocab", tokens, nbytes, make(True), peer(True)),
            Case("sample_tokens_f32(T)", "vocab", tokens, nbytes, make(False), peer(False),
                 note="generate's default: T only"),
            Case("sample_tokens_f32(T,k,p)", "vocab", tokens, nbytes, make(False, 50, 0.9), peer(False, 50, 0.9)),
            Case("sample_tokens_f32(T,p)", "vocab", tokens, nbytes, make(False, 0, 0.9), peer(False, 0, 0.9))]


def peer_filter(torch, z, top_k, top_p):
    """z [rows, vocab] fp32 with -inf outside the top-k / top-p filters, as vLLM's torch-native apply_top_k_top_p
    does it: sort ascending, mask what lies below the k-th largest, then, from softmax and cumsum of the sorted row,
    the low tail whose mass is at most 1 - top_p (the largest z always stays), and scatter back."""
    z_sorted, order = z.sort(dim=-1)
    if 0 < top_k < z.shape[-1]:
        z_sorted.masked_fill_(z_sorted < z_sorted[:, z.shape[-1] - top_k, None], -math.inf)
    if top_p < 1.0:
        cumulative = torch.cumsum(z_sorted.softmax(dim=-1), dim=-1)
        low_tail = cumulative <= 1.0 - top_p
        low_tail[:, -1] = False
        z_sorted.masked_fill_(low_tail, -math.inf)
    return z_sorted.scatter(-1, order, z_sorted)


def peer_sample(torch, logits, temperature, top_k, top_p):
    """The peer of dsv4_sample_tokens_f32: vLLM's torch-native sampler (TopKTopPSampler.forward_native): z = logits / T
    (vLLM divides in place, the same bytes read and written), the filters (peer_filter) when any is on, then the
    exponential race argmax(softmax(z) / q), q ~ Exp(1): Gumbel-max's law from another random stream."""
    z = logits / temperature
    if (0 < top_k < z.shape[-1]) or top_p < 1.0:
        z = peer_filter(torch, z, top_k, top_p)
    probs = z.softmax(dim=-1)
    return probs.div_(torch.empty_like(probs).exponential_()).argmax(dim=-1)


FAMILIES = {"embed": embed_cases, "norm": norm_cases, "rope": rope_cases, "mhc": mhc_cases, "sample": sample_cases}


# ---------------------------------------------------------------------------------------------- timing
COPY_SIZES = (64 << 20, 256 << 20, 1 << 30)
# The driver's device-to-device copy of a size that is not a multiple of 4 KB runs ~20% slower (H100: 144 MB and
# 147 MB copies 2.99 TB/s, and 2.42 at 16 B to 62 KB past them; a 3 MB copy 3.64 us against 3.97). Copies of half an
# op's bytes as they came (a sampling row is 258562 bytes of logits) made a lenient yardstick: copy/ours was ~1.2x
# too high for sampling, rms, hc_pre and hc_head at 4096 tokens.
COPY_GRANULE = 4096


def copy_bandwidth(stream):
    """The device's copy ceiling: device-to-device copies of several sizes (bytes read + written per second,
    median of 10 each), the best of them (large copies can run slower than mid-sized ones)."""
    from pydsv4.cuda import DeviceArray, Timer
    from pydsv4.cuda import runtime
    best = 0.0
    for nbytes in COPY_SIZES:
        src, dst = DeviceArray.empty(nbytes, np.uint8), DeviceArray.empty(nbytes, np.uint8)
        src.zero(stream)
        timer = Timer(stream)
        times = []
        for _ in range(12):
            timer.start()
            runtime.copy_device_to_device(dst.ptr, src.ptr, nbytes, stream)
            timer.stop()
            times.append(timer.elapsed_ms())
        best = max(best, 2 * nbytes / (statistics.median(times[2:]) * 1e-3))
    return best


def _sets_needed(bytes_moved):
    return max(1, min(MAX_SETS, math.ceil(L2_FOOTPRINT / max(bytes_moved, 1))))


def time_case(case, stream):
    """Median microseconds per launch of `case` (graph of GRAPH_LAUNCHES launches over rotating sets)."""
    from pydsv4.cuda import Graph, Timer
    n_sets = _sets_needed(case.bytes_moved)
    launches = [case.make(i) for i in range(n_sets)]
    for launch in launches:          # warm up, and surface argument errors outside the capture
        launch(stream)
    graph = Graph()
    with graph.capture(stream):
        for k in range(GRAPH_LAUNCHES):
            launches[k % n_sets](stream)
    timer = Timer(stream)
    times = []
    for _ in range(REPLAYS + 2):
        timer.start()
        graph.replay(stream)
        timer.stop()
        times.append(timer.elapsed_ms())
    graph.close()
    return statistics.median(times[2:]) * 1e3 / GRAPH_LAUNCHES


def same_bytes_copy_size(bytes_moved):
    """Bytes the same-bytes copy reads (and writes): half of `bytes_moved`, rounded up to a whole COPY_GRANULE (at
    most 4 KB more, ~1.4 ns at copy speed), the sizes the driver copies at full speed."""
    return max(-(-(bytes_moved // 2) // COPY_GRANULE) * COPY_GRANULE, COPY_GRANULE)


def time_same_bytes_copy(bytes_moved, stream):
    """Microseconds per device-to-device copy moving `bytes_moved` (half read, half written), timed like an op: the
    roofline of small problems, where launch and latency, not HBM bandwidth, set the floor."""
    from pydsv4.cuda import DeviceArray
    from pydsv4.cuda import runtime
    half = same_bytes_copy_size(bytes_moved)
    n_sets = _sets_needed(bytes_moved)
    bufs = [(DeviceArray.empty(half, np.uint8), DeviceArray.empty(half, np.uint8)) for _ in range(n_sets)]

    def make(i):
        src, dst = bufs[i]
        return lambda s: runtime.copy_device_to_device(dst.ptr, src.ptr, half, s)
    return time_case(Case("copy", "", 0, bytes_moved, make), stream)


def time_peer(case):
    """Median microseconds per call of the torch peer, timed as time_case times ours: a CUDA graph of GRAPH_LAUNCHES
    calls over rotating sets (timed eagerly instead, small problems would measure the host's launch overhead)."""
    torch = _torch()
    n_sets = _sets_needed(case.bytes_moved)
    calls = [case.peer(i) for i in range(n_sets)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):    # warm up (library handles, workspaces) on a side stream, as capture requires
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):    # temporaries of one call are freed before the next: the graph's pool reuses them
        for k in range(GRAPH_LAUNCHES):
            calls[k % n_sets]()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPLAYS + 2):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    del graph
    return statistics.median(times[2:]) * 1e3 / GRAPH_LAUNCHES


# ---------------------------------------------------------------------------------------------- command line
def selected_families(only):
    """The families whose cases --only may select: those it names (--only norm), else every family, whose op names
    it then filters (--only mhc_pre)."""
    if only is None:
        return list(FAMILIES)
    return [f for f in FAMILIES if only in f] or list(FAMILIES)


def run_ops(args):
    from pydsv4.cuda import gpu_available, new_stream
    from pydsv4.cuda.runtime import device
    families = selected_families(args.only)
    ok, reason = gpu_available(families)
    if not ok:
        print(f"bench: no GPU to measure on: {reason}", file=sys.stderr)
        return 2
    dev = device()
    stream = new_stream()
    copy_bw = copy_bandwidth(stream)
    pdl = os.environ.get("DSV4_PDL", "1") != "0"
    print(f"device: {dev.name}; copy bandwidth (read + write): {copy_bw / 1e9:.0f} GB/s; programmatic dependent "
          f"launch {'on' if pdl else 'off (DSV4_PDL=0)'}", flush=True)
    header = (f"{'op':<26} {'width':<6} {'tokens':>6} {'us':>9} {'GB/s':>8} {'%copy':>6} {'copy us':>8} "
              f"{'copy/ours':>9} {'peer us':>9} {'peer/ours':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for width in args.widths:
        d, H = WIDTHS[width]
        for tokens in args.tokens:
            for family in families:
                for case in FAMILIES[family](width, d, H, tokens):
                    if args.only and args.only not in case.op and args.only not in family:
                        continue
                    us = time_case(case, stream)
                    gbs = case.bytes_moved / (us * 1e-6) / 1e9
                    copy_us = time_same_bytes_copy(case.bytes_moved, stream)
                    peer_us = time_peer(case) if case.peer is not None and args.peers else None
                    peer = f"{peer_us:9.2f} {peer_us / us:9.2f}" if peer_us else f"{'-':>9} {'-':>9}"
                    print(f"{case.op:<26} {width:<6} {tokens:>6} {us:9.2f} {gbs:8.0f} "
                          f"{100 * gbs * 1e9 / copy_bw:5.0f}% {copy_us:8.2f} {copy_us / us:9.2f} {peer}", flush=True)
                    rows.append(dict(op=case.op, width=width, tokens=tokens, us=us, gb_per_s=gbs,
                                     copy_fraction=gbs * 1e9 / copy_bw, same_bytes_copy_us=copy_us,
                                     bytes=case.bytes_moved, peer_us=peer_us, note=case.note))
    if not rows:
        print(f"bench: nothing to time: no op matching {args.only!r} at widths {','.join(args.widths)} and tokens "
              f"{','.join(map(str, args.tokens))} (sampling runs at the flash width, up to {MAX_SAMPLE_ROWS} rows)",
              file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev.name, copy_gb_per_s=copy_bw / 1e9, programmatic_launch=pdl, rows=rows), f,
                      indent=1)
    return 0


def _int_list(text):
    return [int(t) for t in text.split(",") if t]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pydsv4.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="per-kernel time, GB/s and fraction of copy bandwidth")
    ops.add_argument("--widths", type=lambda t: t.split(","), default=["flash", "pro"],
                     help="model widths: flash (4096), pro (7168)")
    ops.add_argument("--tokens", type=_int_list, default=[1, 64, 4096], help="token counts, comma separated")
    ops.add_argument("--only", help="only the family, or the ops, whose name contains this")
    ops.add_argument("--json", help="also write the rows to this JSON file")
    ops.add_argument("--no-peer", dest="peers", action="store_false",
                     help="leave the torch peers out (a profile of our kernels alone: tools/profile.sh)")
    args = parser.parse_args(argv)
    for w in getattr(args, "widths", []):
        if w not in WIDTHS:
            parser.error(f"unknown width {w!r}: choose from {', '.join(WIDTHS)}")
    return run_ops(args)


if __name__ == "__main__":
    sys.exit(main())
