// Manifold-constrained hyper-connections (SPEC sections 4 and 9): hc_pre fused with the RMSNorm and FP8
// quantization that follow it, hc_post, and hc_head. The residual stream X is bf16 [n, hc = 4, d].
//
// hc_pre / hc_head are two kernels (hc_head of large batches: one launch reading X once, cluster_head_kernel at V4-Pro
// widths, resident_head_kernel otherwise):
//  1. mix partials, a split-K product on the tensor cores: partial[t, s, c] = sum over K-split s of
//     flat(X)[t, k] * fn[c, k] (c < 24 for hc_pre, c < 4 for hc_head) and, in slot 31, sum of flat(X)[t, k]^2.
//     A block takes a tile of 128 tokens and one K-split; its 4 warps each hold 32 tokens (two m16 tiles) as the
//     MMA's A operand and the whole of fn's rows as B (n8 tiles). The block's threads copy each K step's X and fn
//     slices into a shared-memory ring 4 steps ahead (cp.async), so a block reads each fn element once for 128
//     tokens (from L2: fn is at most 2.75 MB) and holds nothing in flight in registers; the X copies ask the L2 for
//     whole 256-byte blocks (cp_async16<true>). Against the register ring this replaced (each warp loading its own
//     operands two steps ahead, 234 registers, 8 warps an SM): V4-Pro on the H100, hc_pre at 4096 / 1024 tokens
//     264.6 / 87.0 -> 222.9 / 74.9 us, hc_head 213.6 / 56.5 -> 202.0 / 54.1 (the old kernel with the hint alone:
//     257.7 / 89.1 and 210.0 / 60.3; the ring without it: 260.2 and 234.5 at 4096). Measured at 4096 tokens and
//     not kept: 3 stages and 396 blocks (3 an SM: more splits) 227.7 / 203.2, 4 stages and 396 blocks 268.6 / 240.4
//     (without the hint), 8 stages 265.0 / 241.9 (without the hint), slots of two K steps (128-byte rows, swizzled;
//     one barrier per two steps) in 4 or 3 stages 225.6 / 202.1 and 224.9 / 199.5 (against 223.2 / 201.9 then).
//     ncu at 4096 (hc_pre): 120 us, DRAM 60% busy, 2 blocks an SM (it was 150 us at 48%); now latency-bound: 332
//     instructions a warp a step, 48 of them MMAs, and the top stall is on fixed-latency dependencies (40% of
//     samples), with 2 warps a scheduler. Below kStandaloneSmallMaxTokens tokens mix_small_kernel forms the partials
//     instead.
//     fn is fp32 and the reference sums in float64, so the product must keep fp32 accuracy: X (bf16) is exact
//     in tf32, and fn = hi + lo with hi = fn's top 11 significant bits and lo = tf32(fn - hi); two tf32 MMAs
//     (x*lo, then x*hi) leave an error of about 2^-22 |fn| per product, below fp32 summation noise; MMA chains
//     are one step long (see mma_step_with) and folded with fp32 adds.
//  2. finalize: sums a token's partials in a fixed order (deterministic), forms mix = partial * rsqrt(mean(X^2) +
//     eps), the pre/post weights and the Sinkhorn-normalized comb, re-reads X, y = bf16(sum_i pre_i X_i), then the
//     RMSNorm and the FP8 quantization per 128 (hc_pre) or the optional RMSNorm (hc_head). A block per token (8
//     warps share its partial sums and its row; for hc_pre a ninth forms post and comb meanwhile, as y needs only
//     pre), except for hc_pre of large batches (warp_fin_min_tokens): a warp per token, y parked in shared memory
//     between its two passes, so one token's Sinkhorn (~40 dependent IEEE divisions) hides behind other warps' loads
//     (ncu, hc_pre at V4-Pro x 4096: DRAM 60% -> 65% busy; hc_pre from given partials 197 -> 145 us; hc_head, without
//     a Sinkhorn, was faster with a block per token). The block-per-token kernel and mix_small_kernel warm L2 with
//     their inputs before waiting on the previous kernel; the warp-per-token kernel does not (each warp's prefetch
//     of its row: hc_pre from partials at V4-Pro x 4096 138 -> 178 us).
// Standalone, X is read twice (once per kernel). In a layer, hc_post runs right before each hc_pre (and before
// hc_head): post_mix_kernel writes the new stream and, from the same registers, the next mix product's partials,
// so hc_pre / hc_head given those partials run only the finalize and X is read once. At V4-Pro x 4096 on the
// H100: hc_post + hc_pre = 185 + 264 us, post_mix + hc_pre from its partials = 215 + 139 us; at 1 token 1.3 + 7.1
// and 3.7 + 4.5 us, at 64 tokens 4.3 + 10.3 and 7.5 + 5.9 us (the small-batch mix_small_kernel).
//
// Tried and measured slower, so not kept: one kernel per hc_pre over clusters of 8 or 16 CTAs (a tile of 8 to 32
// tokens, each CTA a dim slice of all 4 copies, partials and y^2 sums exchanged through distributed shared memory,
// X re-read for y from L2): 417 us at 4096 tokens. fn, fp32 and read once per tile, cost more L2 traffic than X
// itself at 32-token tiles (352 MB against 235 MB), and the re-read of X missed L2 (ncu: L2 hit rate 43%, DRAM at
// 29% of peak). A standalone single-read hc_pre has to hold a tile's X on chip while fn streams past >= 64 tokens.
// That design was built too (clusters of 16 CTAs, 7 resident on the H100 = 112 SMs; each CTA keeps its 448 dims of
// fn in shared memory, 172 KB, a 16-token tile of X in registers, one cluster barrier per tile, then CTA r
// finalizes the tile's token r from L2; hc_post optionally fused in front): parity-correct, but 437 us for hc_pre
// and 770 us for hc_post + hc_pre at V4-Pro x 4096 (ncu: 8 warps per SM walk a latency-bound chain of loads, MMA,
// barrier and finalize per tile, 28% issue, ~24K warp instructions per CTA per tile).
// Also tried for hc_head below 64 tokens and not kept: one launch over clusters of CTAs, each CTA a dim slice of a
// few tokens, X held on chip from its one load to y, the mix sums and the sums of y^2 added over the cluster
// through distributed shared memory. V4-Pro on the H100, us at 1 / 8 / 32 / 64 tokens, against 4.70 / 5.07 / 6.05 /
// 6.90 for mix_small_kernel + finalize_block_kernel (V4-Flash 4.31 / 4.56 / 4.83 / 5.77): clusters of 8 CTAs x 4
// tokens, a thread per (vector, copy), y's 4 copies gathered by shuffles, cluster barriers: 8.14 / 8.39 / 8.92 /
// 16.7; a thread per vector (its 4 copies and fn's 4 x 32 floats in registers, 239 of them), each CTA's sums pushed
// into every CTA of the cluster (st.async counted on the receiver's mbarrier, no cluster barrier): 4.78 / 5.94 /
// 6.32 / 8.57, and at 64 tokens 5.78 without fn's loads, 3.90 without the mix product at all; a thread per (vector,
// copy) with X passed through shared memory for y, (CTAs, tokens) per cluster 8 x 4: 5.66 / 6.33 / 7.05 / 13.1 (two
// waves: 128 CTAs of one per SM), 16 x 4: 4.97 / 5.19 / 7.18 / 11.8, 8 x 8: 6.92 / 8.73 / 8.75 / 9.58, 16 x 8: 5.82 /
// 7.00 / 7.29 / 9.76. Each cluster re-reads fn's slice from L2 (at 4 tokens a cluster, 16 x 458 KB = 7.3 MB at 64
// tokens, twice X) and forms its fp32 products on a few warps per SM; the two kernels read fn twice and spread the
// product over 112 blocks of MMAs.
// Also measured, not built, for hc_pre at 64 tokens: one launch without clusters, a CTA per (token tile, 128-dim
// block) holding its X tile in registers from the mix to y (no re-read), the split-K partials and then the sums of
// y^2 exchanged through global memory behind two per-tile grid barriers (an atomic arrival, an acquire spin). A
// skeleton of it had the real traffic, barriers and cheap arithmetic, but no MMA and a stand-in Sinkhorn. V4-Pro x 64
// on the H100, timed like the bench (a graph of PDL launches), in us: 16-token tiles (224 CTAs): 8.95 with no
// barrier, 9.73 with the mix barrier, 11.87 with both, 15.9 with the post / comb warp as well; 32-token tiles (112
// CTAs): 9.35 / 10.35 / 12.21 / 17.0. The same session's bench: the two kernels 10.15, the copy 4.65 (0.8 is 5.8).
// %globaltimer stamps of one launch (16-token tiles, both barriers, from the first CTA past its wait), in us:
//  - X and fn's 48 KB slice in, partials written: 4.8;
//  - mix barrier passed: 5.8;
//  - partial sums gathered: 7.3;
//  - y formed: 8.0;
//  - norm barrier passed: 9.2;
//  - outputs stored: 11.4.
// Six dependent steps of about 1 us each; the two kernels have fewer.
// Also tried for hc_head from 256 tokens and not kept (cluster_head_kernel, pipelined, is its successor): X read once
// by one persistent launch over clusters of 8 CTAs
// (15 resident on the H100), CTA r owning dims [r dim / 8, (r + 1) dim / 8) of the 4 copies with fn's 4 rows over
// that slice in shared memory (57 KB at V4-Pro), tiles of 8 tokens through 2 shared-memory slots (cp.async), the mix
// as fp32 fma chains, the mix sums and the sums of y^2 exchanged through distributed shared memory with two cluster
// barriers per tile: parity-correct, but V4-Pro x 4096 293 us against 185 (1024 tokens 79.6 against 54.3; V4-Flash x
// 4096 204 against 127), 214 us without the mix arithmetic and 193 us without any arithmetic. One CTA of 8 warps per
// SM (172 KB), one 57 KB tile in flight, and every tile gated twice by the slowest of 8 CTAs: the loads and barriers
// alone cost more than both kernels.
// Also measured, not built: the two kernels as one persistent launch whose finalize trails the mix product by a few
// token tiles, so that its re-read of X hits L2. A microbenchmark of that launch's memory traffic alone (no
// arithmetic; hc_head's shape at V4-Pro x 4096 on the H100) had 264 mix CTAs read (tile, K split) items in tile
// order and signal a per-tile counter. 1056 finalize warps each took a token once its tile was complete, read the
// whole row and wrote 14 KB. The mix waited until the finalize was at most W tiles behind. With 64-token tiles x 64
// splits and W = 12 (a window of ~45 MB), DRAM reads fell to 252 MB against 470 (ncu), so the re-read does hit L2.
// The time did not fall enough: 160 us at best (W = 16; the mix CTAs alone 107 us), where hc_head's target with its
// arithmetic is 152. The same traffic as two launches took 215-226 us. The other configurations were slower: windows
// of 2 or 4 tiles 297-1231 us (the mix starves), W = 24 174 us with 368 MB read, 132 mix CTAs 213-340 us. With
// kernel 1's own copy pattern (the cp.async ring with the L2::256B hint) the launch took 198-268 us and read 400 MB.
// An L2 hit is not much cheaper for these warps than a DRAM read: re-reading 512 tokens' rows (29 MB) already in L2
// took 18.9 us with the same 1056 warps, against 19.8 us from DRAM (15.3 us with twice the warps).
// Also built and not kept: a single-read hc_pre / hc_head for large batches, one resident launch without clusters
// (warps with fixed roles; resident_head_kernel, which kept its layout but gives every phase to all warps, replaced
// it for hc_head).
// CTA (c, g), one an SM, owned dims 128c .. 128c + 127 of the 4 copies (fn's 24 x 512 slice in shared memory) for the
// 32-token windows g, g + groups, ... (56 x 2 CTAs at V4-Pro). The CTAs of a window agreed through counters in the
// workspace (zeroed by a memset before the launch; release = fence + atomic add, acquire = a polled ld.acquire.gpu).
// Its warps had fixed roles, 15 warps in all:
//  - a loader warp;
//  - 4 MMA warps forming the chunk's partial rows, post_mix's layout;
//  - 2 finalize warps, each summing one token's 56 rows, then publishing pre, then running the Sinkhorn;
//  - 2 output groups of 4 warps forming y, exchanging the sums of y^2, and quantizing.
// Parity-correct (the hc_pre / hc_head tests at 1024-2048 tokens passed), but slower. V4-Pro x 4096 on the H100,
// hc_pre / hc_head in us, against 223 / 185 for the two kernels:
//  - X held in shared memory from its load to y (4 slots), 128 cp.async.bulk copies of 256 bytes per window:
//    451 / 312. At 1024 tokens 130.5 / 90.9; V4-Flash x 4096 233.5 / 164.2.
//    %globaltimer stamps per window: each window's copies took ~5 us to land and the next were issued ~5 us later,
//    so the TMA unit moved these small copies at ~6.5 GB/s an SM.
//  - One 3-D tensor-map box (32 KB) per window, 5 slots each freed after the MMA, the output warps re-reading X from
//    L2, loads at most 8 windows ahead of the outputs: 473 / 327. The loads then ran ahead as intended; the stages
//    became the limit. Per window:
//      - MMA warps: 6-7 us (1.3 us with the MMAs left out). Each warp held one m16 tile, so its HMMAs formed
//        dependent chains, one warp per scheduler; cvt.rna.tf32 is ~4 SASS instructions. Kernel 1 runs the same
//        MMAs with 2 m tiles x 2 warps a scheduler in ~83 us.
//      - an output group: 8-10 us, of which each cross-CTA hop (pre, then the sums of y^2) took 1.5-3 us under load;
//      - a finalize warp: 6-8 us.
//    Variants, us, to the last stamp of one launch (this build: 454 / 322):
//      - 3 / 4 output groups: 489 / 281 and 525 / 308 (both builds spilled: 68 / 200 bytes);
//      - the loads' lead of 6 / 12 / 16 windows: unchanged (bench timing);
//      - the fence dropped (timing only): 429 / 267;
//      - the MMAs dropped: 362 / 302.
// To reach 0.8 (~170 / ~150 us), every stage would need about 2.3 us a window: more independent MMAs per warp, and
// each cross-CTA hop overlapped across several windows in flight rather than walked once per window.
// Also measured and not kept (V4-Pro x 4096): kernel 1's L2::256B hint on post_mix's copies (214.6 -> 220.7 us) or
// on finalize_warp_kernel's X loads (hc_pre 223.4 either way); a copy with post_mix's 64-byte-per-row pattern runs
// at 2581 GB/s against 2749 contiguous, so the pattern costs ~6%; post_mix + finalize (or hc_pre) in token chunks
// so the finalize re-reads X from L2, slower at every chunk size (pair: 408 us whole, 399 / 425 / 496 / 551 us in
// chunks of 2048 / 1024 / 512 / 256 tokens; after kernel 1's ring, standalone hc_pre / hc_head 226 / 186 us whole,
// 227 / 198, 299 / 217, 309 / 234, 394 / 300 us in those chunks); the finalizes' partials summed in batches
// of 32 independent loads, 1 token 13.2 -> 12.5 us but hc_head at 4096 tokens 205 -> 221 us; post_mix (then one
// warp doing both roles, see post_mix_kernel) over 256-dim chunks with a 3-deep ring, half the partials: the
// finalize 143 -> 135 us but post_mix 259 -> 268 us. What the partials cost the finalize today (hc_pre from given
// partials, V4-Pro, H100, the bench's timing, two runs; diagnostics that sum fewer splits, wrong results): all 56
// splits 4.74-4.75 / 136.3-136.6 us at 64 / 4096 tokens, 28 splits 4.65-4.66 / 132.4-132.5, 1 split 4.50 /
// 127.7 (a same-bytes copy 3.64 / 108.8 us). Measured and not kept (copy/ours, three runs each, at 64 / 4096 tokens,
// against 0.77 / 0.80): finalize_warp_kernel summing its partials 28 loads at a time in place of 8 (28 bytes spilled)
// 0.77-0.78 / 0.80; each warp's partial rows prefetched into L2 (prefetch_l2) before X's first batch 0.77 / 0.77,
// after it 0.77 / 0.78.
//
// Numerics against pydsv4/reference (float64 contractions rounded to fp32):
//  - mix: fp32 accumulation of tf32-split products in another order: ~1e-6 relative, so post and comb agree to
//    ~1e-5 and y = bf16(sum pre_i X_i) (an fp32 fma chain) differs where its value sits near a rounding tie (rare)
//    or where the sum cancels (an error of ~2^-22 sum_i |pre_i X_i|, many bf16 ulps of a tiny y).
//  - the Sinkhorn sums add the 4 entries of a row / column left to right as NumPy does; divisions and sqrt are
//    IEEE (no fast math).
//  - RMSNorm and FP8 quantization as cuda/norm.cu: quantization is exact given the bf16 normed values.
// hc_post is one pass: out[t, j] = bf16(post_j f + sum_i comb_ij X_i) as an fp32 fma chain, 16-byte vectors.
#include <algorithm>

#include "common.cuh"

namespace {

using dsv4::Vec16;

constexpr int kHc = 4;                      // hc_mult (SPEC 1): copies of the residual stream
constexpr int kPreMix = (2 + kHc) * kHc;    // 24 mix values of hc_pre: pre, post, comb (4 x 4)
constexpr int kHeadMix = kHc;               // 4 mix values of hc_head
constexpr int kBf16PerVec = 8;
constexpr int kQuantBlock = 128;            // FP8 block along dim (SPEC 3)

// ---- kernel 1: mix partials --------------------------------------------------------------------------------------

constexpr int kMixWarps = 4;
constexpr int kMixThreads = kMixWarps * dsv4::kWarpSize;
constexpr int kWarpTokens = 32;                         // two m16 MMA tiles
constexpr int kTileTokens = kMixWarps * kWarpTokens;    // 128
constexpr int kStepK = 32;                              // K per warp step: 4 lanes x 8 bf16 per row
constexpr int kMixStages = 5;                           // shared-memory ring: 4 steps in flight while one computes
constexpr int kRedSumSq = 31;                           // column of sum(X^2) in kernel 1's shared-memory rows
constexpr int kRedStride = 33;                          // shared-memory row, padded against bank conflicts
constexpr int64_t kSplitAlign = 128;                    // K per split is a multiple of this
constexpr int64_t kTargetBlocks = 264;                  // two blocks per SM of a 132-SM H100 / H200
constexpr int kPostMixDims = 128;  // dims per block of post_mix and of the small-batch mix: dim / 128 partial splits

// Floats per (split, token) partial row: the num_mix sums, then sum(X^2) (25 for hc_pre, 5 for hc_head). Partials are
// [splits, n_tokens, row], packed: a tile of 16 or more consecutive tokens writes whole 32-byte sectors. Against
// 128-byte rows per (token, split): hc_head at V4-Pro x 4096 204 -> 199 us, hc_pre's finalize unchanged; 100-byte
// rows per token, split-minor, leave sectors half written by different blocks (post_mix 8% slower).
__host__ __device__ constexpr int partial_row(int num_mix) { return num_mix + 1; }
constexpr int kMaxPartialRow = partial_row(kPreMix);

struct MixPartialArgs {
    float* partial;        // [splits, n_tokens, partial_row(num_mix)] fp32
    const Vec16* x;        // [n_tokens, k / 8] bf16 (flat(X))
    const float4* fn;      // [num_mix, k / 4] fp32
    int64_t n_tokens;
    int64_t k;             // hc * dim, a multiple of 512
    int64_t k_per_split;   // a multiple of kSplitAlign
    int splits;
    int num_mix;           // fn rows: 24 or 4
};

// One K step of a block's tile in kernel 1's shared-memory ring: X of its kTileTokens tokens and fn's 8 * kNTiles rows
// (zeros past n_tokens and num_mix). fn's rows are padded by 16 bytes, so that a warp's B fragments (lane (g, q):
// row g, bytes 32q .. 32q + 31) spread evenly over the banks; X's 64-byte rows already do.
constexpr int kXStepVecs = kStepK / kBf16PerVec;  // 4
constexpr int kFnStepVecs = kStepK / 4;           // 8
template <int kNTiles>
struct MixSlot {
    Vec16 x[kTileTokens][kXStepVecs];             // bf16 X[token, k0 .. k0 + 31]
    float4 fn[8 * kNTiles][kFnStepVecs + 1];      // fp32 fn[row, k0 .. k0 + 31], then padding
};

// 16 bytes; size 0 fills zeros. kL2Block256: the L2 fetches the whole 256-byte block around them, for a row read once
// a step at a time (kernel 1's X), so that the row's next steps hit L2. Otherwise each block's 128 rows, 64 bytes a
// step, open a DRAM page per row per step (a microbenchmark of that pattern over V4-Pro x 4096: 2104 GB/s, 2907 with
// the hint, 2951 at 256 bytes a step).
template <bool kL2Block256 = false>
__device__ __forceinline__ void cp_async16(uint32_t smem, const void* global, bool valid) {
    if constexpr (kL2Block256)
        asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(smem), "l"(global),
                     "r"(valid ? 16 : 0)
                     : "memory");
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem), "l"(global), "r"(valid ? 16 : 0)
                     : "memory");
}
template <bool kL2Block256 = false>
__device__ __forceinline__ void cp_async16(void* smem, const void* global, bool valid) {
    cp_async16<kL2Block256>(dsv4::shared_address(smem), global, valid);
}
// 4 bytes (L1-allocating: cp.async.cg takes only 16); size 0 fills zeros.
__device__ __forceinline__ void cp_async4(void* smem, const void* global, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dsv4::shared_address(smem)), "l"(global),
                 "r"(valid ? 4 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory"); }

// X is streamed once by the finalize: keep it out of L1.
__device__ __forceinline__ Vec16 load_stream(const Vec16* ptr) {
    Vec16 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
    return v;
}

__device__ __forceinline__ uint32_t tf32_round(float x) {
    uint32_t out;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(out) : "f"(x));
    return out;
}

// c += a * b for one m16n8k8 tile: tf32 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float component(const float4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ uint32_t word(const Vec16& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The MMA's K slots are a permutation of the 32 K elements of the step, the same for A and B: lane (g, q)
// (g = lane / 4, q = lane % 4) holds elements k0 + 8q .. 8q + 7 of its rows, and MMA u (u < 4) takes element
// 8q + 2u as K slot q and 8q + 2u + 1 as K slot q + 4. So A and B fragments come straight from 16-byte loads.
// The tensor cores add into the accumulator without rounding to nearest (truncation after alignment): over a chain
// of hundreds of MMAs that error builds up (~2e-5 relative at K = 28672, measured). So each step's 8 MMAs per tile
// accumulate into fresh registers, folded into acc by one fp32 (round-to-nearest) add per element.
// fn = hi + lo: hi = fn's top 11 significant bits (exact in tf32), lo = tf32(fn - hi).
__device__ __forceinline__ void split_tf32(float f, uint32_t& hi, uint32_t& lo) {
    hi = __float_as_uint(f) & 0xFFFFE000u;
    lo = tf32_round(f - __uint_as_float(hi));
}

// fn_fragment(nt, u, hi0, hi1, lo0, lo1) gives the split B fragments of n tile nt for MMA u: fn elements 8q + 2u and
// 8q + 2u + 1 of row nt * 8 + g.
template <int kMTiles, int kNTiles, typename FnFragment>
__device__ __forceinline__ void mma_step_with(float (&acc)[kMTiles][kNTiles][4], float (&sumsq)[kMTiles][2],
                                              const Vec16 (&x)[kMTiles][2], FnFragment fn_fragment) {
    float part[kMTiles][kNTiles][4] = {};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint32_t w = word(x[mt][h], u);  // bf16 elements 2u (low half) and 2u + 1
                const uint32_t even = w << 16, odd = w & 0xFFFF0000u;
                a[mt][h] = even;      // a0 / a1: rows g / g + 8, K slot q
                a[mt][2 + h] = odd;   // a2 / a3: rows g / g + 8, K slot q + 4
                sumsq[mt][h] = fmaf(__uint_as_float(even), __uint_as_float(even), sumsq[mt][h]);
                sumsq[mt][h] = fmaf(__uint_as_float(odd), __uint_as_float(odd), sumsq[mt][h]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
            uint32_t hi0, hi1, lo0, lo1;
            fn_fragment(nt, u, hi0, hi1, lo0, lo1);
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
                mma_tf32(part[mt][nt], a[mt], lo0, lo1);
                mma_tf32(part[mt][nt], a[mt], hi0, hi1);
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] += part[mt][nt][i];
}

// grid (splits, tiles), kMixThreads threads, kMixStages * sizeof(MixSlot<kNTiles>) bytes of dynamic shared memory.
// Block (split, tile) forms the partials of the tile's kTileTokens tokens over the split's K range; warp w holds tokens
// 32w .. 32w + 31 of the tile (two m16 tiles) as the MMA's A operand. The block's threads copy each K step's X and fn
// slices into a ring of kMixStages slots (cp.async, 16 bytes a copy, nothing held in registers), kMixStages - 1 steps
// ahead of the step its warps multiply: one barrier per step, which also frees the slot the next copies overwrite.
template <int kNTiles>
__global__ void __launch_bounds__(kMixThreads) mix_partial_kernel(const MixPartialArgs args) {
    dsv4::await_previous_kernel();
    extern __shared__ __align__(16) unsigned char mix_smem[];
    MixSlot<kNTiles>* ring = reinterpret_cast<MixSlot<kNTiles>*>(mix_smem);

    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const int g = lane / 4, q = lane % 4;
    const int split = blockIdx.x;
    const int64_t tile_token0 = int64_t(blockIdx.y) * kTileTokens;
    const int64_t k_begin = split * args.k_per_split;
    const int64_t k_end = min(args.k, k_begin + args.k_per_split);
    const int steps = static_cast<int>((k_end - k_begin) / kStepK);

    // This thread's copies of a step: X vector tid % 4 of rows tid / 4 + 32 j, and fn chunks tid + kMixThreads j
    // (row c / 8, vector c % 8). Sources at step 0 (a row past n_tokens / num_mix reads nothing and fills zeros).
    constexpr int kXCopies = kTileTokens * kXStepVecs / kMixThreads;  // 4
    constexpr int kFnChunks = 8 * kNTiles * kFnStepVecs;
    constexpr int kFnCopies = (kFnChunks + kMixThreads - 1) / kMixThreads;
    const Vec16* x_src[kXCopies];
    bool x_valid[kXCopies];
#pragma unroll
    for (int j = 0; j < kXCopies; ++j) {
        const int64_t token = tile_token0 + tid / kXStepVecs + j * (kMixThreads / kXStepVecs);
        x_valid[j] = token < args.n_tokens;
        x_src[j] = x_valid[j] ? args.x + token * (args.k / kBf16PerVec) + k_begin / kBf16PerVec + tid % kXStepVecs
                              : args.x;
    }
    const float4* fn_src[kFnCopies];
    bool fn_valid[kFnCopies];
#pragma unroll
    for (int j = 0; j < kFnCopies; ++j) {
        const int c = tid + j * kMixThreads, row = c / kFnStepVecs;
        fn_valid[j] = c < kFnChunks && row < args.num_mix;
        fn_src[j] = fn_valid[j] ? args.fn + row * (args.k / 4) + k_begin / 4 + c % kFnStepVecs : args.fn;
    }
    auto issue = [&](int step) {
        if (step < steps) {
            MixSlot<kNTiles>& slot = ring[step % kMixStages];
#pragma unroll
            for (int j = 0; j < kXCopies; ++j)
                cp_async16<true>(&slot.x[tid / kXStepVecs + j * (kMixThreads / kXStepVecs)][tid % kXStepVecs],
                                 x_src[j] + (x_valid[j] ? int64_t(step) * kXStepVecs : 0), x_valid[j]);
#pragma unroll
            for (int j = 0; j < kFnCopies; ++j) {
                const int c = tid + j * kMixThreads;
                if (c < kFnChunks)
                    cp_async16(&slot.fn[c / kFnStepVecs][c % kFnStepVecs],
                               fn_src[j] + (fn_valid[j] ? int64_t(step) * kFnStepVecs : 0), fn_valid[j]);
            }
        }
        cp_async_commit();  // possibly empty: one group per step keeps the wait count fixed
    };
#pragma unroll
    for (int s = 0; s < kMixStages - 1; ++s) issue(s);

    float acc[2][kNTiles][4] = {};
    float sumsq[2][2] = {};
    for (int step = 0; step < steps; ++step) {
        cp_async_wait<kMixStages - 2>();  // this thread's copies of this step have landed
        __syncthreads();                   // everyone's have, and every warp is done with the previous step's slot
        issue(step + kMixStages - 1);      // into that slot
        const MixSlot<kNTiles>& slot = ring[step % kMixStages];
        Vec16 x[2][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) x[mt][h] = slot.x[warp * kWarpTokens + mt * 16 + h * 8 + g][q];
        float4 fn[kNTiles][2];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int v = 0; v < 2; ++v) fn[nt][v] = slot.fn[nt * 8 + g][2 * q + v];
        mma_step_with<2, kNTiles>(acc, sumsq, x, [&](int nt, int u, uint32_t& hi0, uint32_t& hi1, uint32_t& lo0,
                                                     uint32_t& lo1) {
            split_tf32(component(fn[nt][u / 2], (2 * u) % 4), hi0, lo0);
            split_tf32(component(fn[nt][u / 2], (2 * u) % 4 + 1), hi1, lo1);
        });
    }
    cp_async_wait<0>();  // (only empty groups remain)
    __syncthreads();     // the ring is free: its first bytes take the per-warp sums

    // sum(X^2) of a row is spread over its 4 lanes q.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            sumsq[mt][h] += __shfl_xor_sync(0xFFFFFFFFu, sumsq[mt][h], 1);
            sumsq[mt][h] += __shfl_xor_sync(0xFFFFFFFFu, sumsq[mt][h], 2);
        }
    // Accumulator (row g or g + 8, columns 2q, 2q + 1) of n tile nt is mix column nt * 8 + 2q (+ 1).
    auto red = reinterpret_cast<float (*)[kWarpTokens][kRedStride]>(mix_smem);  // [kMixWarps]
    static_assert(sizeof(float) * kMixWarps * kWarpTokens * kRedStride <= kMixStages * sizeof(MixSlot<1>),
                  "the ring holds the per-warp sums");
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
            float* r0 = red[warp][mt * 16 + g] + nt * 8 + 2 * q;
            float* r8 = red[warp][mt * 16 + 8 + g] + nt * 8 + 2 * q;
            r0[0] = acc[mt][nt][0], r0[1] = acc[mt][nt][1];
            r8[0] = acc[mt][nt][2], r8[1] = acc[mt][nt][3];
        }
        if (q == 0) {
            red[warp][mt * 16 + g][kRedSumSq] = sumsq[mt][0];
            red[warp][mt * 16 + 8 + g][kRedSumSq] = sumsq[mt][1];
        }
    }
    __syncthreads();

    // partial[split, token, c], whole rows of consecutive tokens.
    const int row_floats = partial_row(args.num_mix);
    for (int i = tid; i < kTileTokens * row_floats; i += kMixThreads) {
        const int c = i % row_floats, r = i / row_floats;
        const int64_t token = tile_token0 + r;
        if (token >= args.n_tokens) break;
        const int col = c == args.num_mix ? kRedSumSq : c;
        args.partial[(split * args.n_tokens + token) * row_floats + c] = red[r / kWarpTokens][r % kWarpTokens][col];
    }
}

template <int kNTiles>
constexpr size_t mix_smem_bytes() { return kMixStages * sizeof(MixSlot<kNTiles>); }

// How kernel 1 cuts the work; a pure function of (n_tokens, k) so the workspace size can be computed alone.
struct MixPlan {
    int64_t tiles;
    int64_t splits;
    int64_t k_per_split;
};

MixPlan plan_mix(int64_t n_tokens, int64_t k) {
    MixPlan plan{};
    plan.tiles = (n_tokens + kTileTokens - 1) / kTileTokens;
    const int64_t tile_tokens = std::min<int64_t>(n_tokens, kTileTokens);
    // A split writes 128 bytes of partials per token and reads 2 bytes of X per token per K element: at least
    // 4 * tile_tokens K elements per split keep the partials small next to X; otherwise split K until the grid
    // covers the GPU (one token reads 2.75 MB of fn at V4-Pro width: that is the 1-token cost to spread).
    const int64_t min_split_k =
        std::max<int64_t>(kSplitAlign, (4 * tile_tokens + kSplitAlign - 1) / kSplitAlign * kSplitAlign);
    const int64_t max_splits = std::max<int64_t>(1, k / min_split_k);
    // tiles x splits <= kTargetBlocks: one wave (rounding up left a second wave of a few blocks, 288 at 4096 tokens).
    const int64_t want = std::clamp<int64_t>(kTargetBlocks / plan.tiles, 1, max_splits);
    plan.k_per_split = ((k + want - 1) / want + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
    plan.splits = (k + plan.k_per_split - 1) / plan.k_per_split;
    return plan;
}

// Kernel 1's partials, or (small batches) mix_small_kernel's dim / 128 splits, whichever is more.
size_t mix_workspace_bytes(int64_t n_tokens, int64_t k) {
    if (n_tokens <= 0 || k <= 0) return 0;
    const int64_t splits = std::max<int64_t>(plan_mix(n_tokens, k).splits, k / (kHc * kPostMixDims));
    return static_cast<size_t>(n_tokens * splits * kMaxPartialRow * sizeof(float));
}

// ---- kernel 2: finalize ------------------------------------------------------------------------------------------

constexpr int kBlockFinRowThreads = 256;                           // finalize_block_kernel: a block per token
constexpr int kBlockFinRowWarps = kBlockFinRowThreads / dsv4::kWarpSize;
constexpr int kBlockFinVecs = 4;                                  // 16-byte vectors per thread per copy: dim <= 8192
constexpr int kFinPartialBatch = 8;                               // partial loads per lane in flight
// Row warps, and for hc_pre one more that forms post and comb.
__host__ __device__ constexpr int block_fin_threads(bool pre) { return kBlockFinRowThreads + (pre ? 32 : 0); }
constexpr int kFinWarps = 4;                                      // finalize_warp_kernel: tokens per block
constexpr int kFinThreads = kFinWarps * dsv4::kWarpSize;
constexpr int kFinBatch = 4;                                      // 16-byte vectors per lane per copy in flight
constexpr int kFinNormVecs = 2;                                   // pass 2's vectors per lane at a time
constexpr int64_t kMaxDim = 8192;                                 // y of a token in shared memory: <= 16 KB
constexpr int kQuantLanes = kQuantBlock / kBf16PerVec;            // 16 lanes hold one quantization block

struct FinalizeArgs {
    float* post;                // [n_tokens, 4] fp32 (hc_pre)
    float* comb;                // [n_tokens, 4, 4] fp32 (hc_pre)
    Vec16* y;                   // [n_tokens, vecs] bf16, or NULL (hc_pre)
    uint2* q;                   // [n_tokens, vecs] e4m3 x 8, or NULL (hc_pre)
    float* y_scale;             // y_scale[t * scale_stride_token + b * scale_stride_block] (with q)
    const float* partial;       // [splits, n_tokens, partial_row(24 or 4)]
    const Vec16* x;             // [n_tokens, 4, vecs] bf16
    const float* hc_scale;      // [3] (hc_pre) or [1] (hc_head)
    const float* hc_base;       // [24] or [4]
    const float4* norm_weight;  // [dim / 4], or NULL (hc_head without norm)
    int64_t n_tokens;
    int64_t vecs;               // dim / 8
    int64_t scale_stride_token, scale_stride_block;
    int splits;
    int sinkhorn_iters;
    float k;                    // hc * dim as float (exact), the divisor of mean(X^2)
    float dim;
    float hc_eps, mix_eps, norm_eps;
};

// c / s rounded to nearest for normal operands of moderate size (both in [2^-100, 2^10]): the fast path of CUDA's
// div.rn.f32 (MUFU reciprocal, one Newton step, one residual correction), without the range check (FCHK) and the
// branch to its slow path. The fast path is correctly rounded wherever that check lets it through, which it does
// for such operands (no quotient or reciprocal near overflow or the subnormals). The Sinkhorn's ~40 divisions form
// one dependent chain, the critical path of the small-batch finalize: this takes the check and branch off each link.
// The Sinkhorn uses it when hc_eps is in [kMinFastEps, 1]: its entries start in [eps, 1 + eps], and every iterate of a
// 4 x 4 matrix with entries in [a, b] stays >= (a / b)^2 / 4 (~eps^2 / 4 >= 2^-82 here) and <= 1 + eps, its sums in
// [eps, 5], so every operand is in range.
constexpr float kMinFastEps = 0x1p-40f;
__device__ __forceinline__ float div_rn_moderate(float c, float s) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
    r = fmaf(r, fmaf(-s, r, 1.0f), r);
    const float q = __fmul_rn(c, r);
    return fmaf(fmaf(-s, q, c), r, q);
}

// 1 / sqrt(sumsq / count + eps), each step rounded to nearest: the reference's rsqrt(mean(v^2) + eps) in fp32 (the
// mix's over K = 4 dim, the RMSNorm's over dim).
__device__ __forceinline__ float rms_scale(float sumsq, float count, float eps) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(sumsq, count), eps)));
}

__device__ __forceinline__ float sigmoid(float v) { return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-v))); }

// The 16 lanes 16..31 hold comb[i][j] at lane 16 + 4i + j. NumPy sums the 4 entries of a row / column in order.
__device__ __forceinline__ float comb_row_sum(float c, int lane) {
    const int first = lane & ~3;
    float s = __shfl_sync(0xFFFFFFFFu, c, first);
#pragma unroll
    for (int j = 1; j < 4; ++j) s = __fadd_rn(s, __shfl_sync(0xFFFFFFFFu, c, first + j));
    return s;
}

__device__ __forceinline__ float comb_col_sum(float c, int lane) {
    const int first = (lane & ~15) | (lane & 3);
    float s = __shfl_sync(0xFFFFFFFFu, c, first);
#pragma unroll
    for (int i = 1; i < 4; ++i) s = __fadd_rn(s, __shfl_sync(0xFFFFFFFFu, c, first + 4 * i));
    return s;
}

__host__ __device__ constexpr int fin_partial_row(bool pre) { return partial_row(pre ? kPreMix : kHeadMix); }

// The constants of the weights' formulas, loaded when a kernel starts so that no dependent load sits between the
// partial sums and the weights: every lane holds hc_scale, lane c holds hc_base[c] (0 past the mix columns).
struct MixConstants {
    float scale[3];  // hc_scale: pre, post, comb (hc_head: pre only)
    float base;      // hc_base[lane]
};

template <bool kPre>
__device__ __forceinline__ MixConstants load_mix_constants(const FinalizeArgs& args, int lane) {
    MixConstants c;
    c.scale[0] = __ldg(args.hc_scale);
    c.scale[1] = kPre ? __ldg(args.hc_scale + 1) : 0.0f;
    c.scale[2] = kPre ? __ldg(args.hc_scale + 2) : 0.0f;
    c.base = lane < fin_partial_row(kPre) - 1 ? __ldg(args.hc_base + lane) : 0.0f;
    return c;
}

// Called by a whole warp, lane c holding the token's summed partial c (mix column c < 24 / 4, the sum of X^2 in the
// row's last slot): returns mix[c] on lane c.
template <bool kPre>
__device__ __forceinline__ float mix_value(float total, const FinalizeArgs& args) {
    const float sumsq = __shfl_sync(0xFFFFFFFFu, total, fin_partial_row(kPre) - 1);
    return __fmul_rn(total, rms_scale(sumsq, args.k, args.mix_eps));
}

// pre_i = sigmoid(mix_i * scale_0 + base_i) + eps for i < 4 (hc_pre and hc_head alike), on every lane of the warp.
__device__ __forceinline__ void pre_weights(float mix, const MixConstants& c, int lane, float hc_eps,
                                            float (&pre)[kHc]) {
    const float own = lane < kHc ? __fadd_rn(sigmoid(__fadd_rn(__fmul_rn(mix, c.scale[0]), c.base)), hc_eps) : 0.0f;
#pragma unroll
    for (int i = 0; i < kHc; ++i) pre[i] = __shfl_sync(0xFFFFFFFFu, own, i);
}

// hc_pre's post[t] and the Sinkhorn-normalized comb[t], by a whole warp from lane c's mix[c]. y does not depend on
// them, so the small-batch finalize runs this on a warp of its own, beside the warps that form y.
__device__ void post_and_comb(float mix, const MixConstants& c, int lane, int64_t t, const FinalizeArgs& args) {
    if (lane >= kHc && lane < 2 * kHc) {
        const float v = __fadd_rn(__fmul_rn(mix, c.scale[1]), c.base);
        args.post[t * kHc + lane - kHc] = __fmul_rn(2.0f, sigmoid(v));
    }
    // Sinkhorn on lanes 16..31: entry e = lane - 16 = 4i + j of the 4 x 4 matrix; lanes 0..15 run the same code on
    // copies (their shuffles stay among lanes 0..15) and write nothing.
    const int e = lane & 15;
    const float logit = __fadd_rn(__fmul_rn(__shfl_sync(0xFFFFFFFFu, mix, 2 * kHc + e), c.scale[2]),
                                  __shfl_sync(0xFFFFFFFFu, c.base, 2 * kHc + e));
    float m = fmaxf(logit, __shfl_xor_sync(0xFFFFFFFFu, logit, 1));
    m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, 2));
    const float ex = expf(__fsub_rn(logit, m));
    float comb = __fadd_rn(__fdiv_rn(ex, comb_row_sum(ex, lane)), args.hc_eps);  // ex may be subnormal: div.rn
    if (args.hc_eps >= kMinFastEps && args.hc_eps <= 1.0f) {
        comb = div_rn_moderate(comb, __fadd_rn(comb_col_sum(comb, lane), args.hc_eps));
        for (int it = 1; it < args.sinkhorn_iters; ++it) {
            comb = div_rn_moderate(comb, __fadd_rn(comb_row_sum(comb, lane), args.hc_eps));
            comb = div_rn_moderate(comb, __fadd_rn(comb_col_sum(comb, lane), args.hc_eps));
        }
    } else {
        comb = __fdiv_rn(comb, __fadd_rn(comb_col_sum(comb, lane), args.hc_eps));
        for (int it = 1; it < args.sinkhorn_iters; ++it) {
            comb = __fdiv_rn(comb, __fadd_rn(comb_row_sum(comb, lane), args.hc_eps));
            comb = __fdiv_rn(comb, __fadd_rn(comb_col_sum(comb, lane), args.hc_eps));
        }
    }
    if (lane >= 16) args.comb[t * kHc * kHc + e] = comb;
}

// y = bf16(sum_i pre_i X_i) at 8 elements, an fp32 fma chain in i order; adds the squares of y's bf16 values.
__device__ __forceinline__ Vec16 weighted_sum(const Vec16 (&x)[kHc], const float (&pre)[kHc], float& sumsq) {
    float x0[8], x1[8], x2[8], x3[8], y[8];
    dsv4::unpack_bf16x8(x[0], x0);
    dsv4::unpack_bf16x8(x[1], x1);
    dsv4::unpack_bf16x8(x[2], x2);
    dsv4::unpack_bf16x8(x[3], x3);
#pragma unroll
    for (int e = 0; e < 8; ++e)
        y[e] = fmaf(pre[3], x3[e], fmaf(pre[2], x2[e], fmaf(pre[1], x1[e], __fmul_rn(pre[0], x0[e]))));
    const Vec16 packed = dsv4::pack_bf16x8(y);
    dsv4::unpack_bf16x8(packed, y);
#pragma unroll
    for (int e = 0; e < 8; ++e) sumsq = fmaf(y[e], y[e], sumsq);
    return packed;
}

// Token t's outputs at vector idx from its bf16 y: y (normed when norm), and for hc_pre q with its scale. Every lane
// of the warp calls it (the quantizer's group shuffles); valid = idx < vecs is uniform over each quantization group.
// weights points at an on-chip copy (shared memory or registers) of the norm weights of vector idx (2 float4).
template <bool kPre>
__device__ __forceinline__ void store_outputs(const FinalizeArgs& args, int64_t t, int64_t idx, bool valid, Vec16 y,
                                              bool norm, float inv_rms, const float4* weights) {
    float f[8];
    if (norm) {
        dsv4::unpack_bf16x8(y, f);
        float w[8] = {};
        if (valid) {
            const float4 w0 = weights[0], w1 = weights[1];
            w[0] = w0.x, w[1] = w0.y, w[2] = w0.z, w[3] = w0.w, w[4] = w1.x, w[5] = w1.y, w[6] = w1.z, w[7] = w1.w;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = __fmul_rn(w[e], __fmul_rn(f[e], inv_rms));
        y = dsv4::pack_bf16x8(f);
    }
    if (valid && args.y != nullptr) args.y[t * args.vecs + idx] = y;
    if constexpr (kPre) {
        if (args.q != nullptr) {
            dsv4::unpack_bf16x8(y, f);  // the quantizer sees the bf16 normed values
            const int exponent = dsv4::group_e4m3_exponent<kQuantLanes>(f);
            if (valid) {
                args.q[t * args.vecs + idx] = dsv4::e4m3x8(f, exponent);
                if (threadIdx.x % kQuantLanes == 0)
                    args.y_scale[t * args.scale_stride_token + (idx / kQuantLanes) * args.scale_stride_block] =
                        dsv4::exp2_int(exponent);
            }
        }
    }
}

// Before await_previous_kernel(): warm L2 with token t's X row (the 4 copies are one contiguous range) and its
// partial rows, from `threads` threads numbered `tid`.
template <bool kPre>
__device__ __forceinline__ void prefetch_token_inputs(const FinalizeArgs& args, int64_t t, int tid, int threads) {
    if (tid == 0)
        dsv4::prefetch_l2_bulk(args.x + t * kHc * args.vecs, static_cast<uint32_t>(kHc * args.vecs * sizeof(Vec16)));
    constexpr int kRow = fin_partial_row(kPre);
    for (int s = tid; s < args.splits; s += threads) {
        const float* row = args.partial + (s * args.n_tokens + t) * kRow;
        dsv4::prefetch_l2(row);
        dsv4::prefetch_l2(row + kRow - 1);  // a row may straddle two lines
    }
}

// Small batches: a block per token, its kBlockFinRowWarps row warps sharing the token's partial sums and its row (a
// warp per token would stream a whole row alone). hc_pre adds a warp that forms post and comb (the Sinkhorn, ~40
// dependent IEEE divisions) while the row warps form y, which needs only pre. kPre: hc_pre (post, comb,
// y = rms_norm(...), FP8); else hc_head (y, optionally normed).
// Before waiting on the previous kernel each block warms L2 with its token's X row and partial rows
// (prefetch_token_inputs), so that both are L2 hits once it may read them. hc_pre from partials, V4-Pro x 64 tokens
// on the H100: 5.87 -> 4.87 us; the 8 row warps' sums of y^2 are added from shared memory, not by 5 more shuffles.
// At 64 tokens the row (its loads, 57 KB of X and 28 KB of norm weights per SM, and the FP8 outputs) and the post /
// comb warp are about as long (ablations: 20 -> 1 Sinkhorn iteration -0.1 us, no y / q outputs -0.2 us).
// Measured slower, not kept: each token's row split over a cluster of 4 (up to 33 tokens) or 2 CTAs (up to 66), the
// sums of y^2 added through distributed shared memory: V4-Pro hc_pre from partials 5.4 -> 5.9 us at 1 token, 7.5 -> 8.1
// us at 64 (the post / comb warp, not the row, was the longer path then; a cluster barrier alone costs ~0.25 us in a
// PDL chain, measured on empty kernels). The post / comb warp summing the partials alone and the row warps loading X
// meanwhile: 4.9 -> 6.8 us at 64 tokens (one warp's 56 loads per lane and sums lengthen the Sinkhorn's path). The row's
// loads issued with the partials, before their barrier, when one step (load_row) issued X and the norm weights' copies
// together: 5.1 -> 5.6 us (the partials queue behind them; X alone with the partials is faster, see below); the
// weights' copies (28 KB, L2 hits) issued before the partials' loads: 4.91 -> 5.72 us at 64 tokens (V4-Flash 4.46 ->
// 5.17), or only once y is formed: 5.27-5.37 (hc_head at 64 tokens 7.0 -> 7.4). The quantizer's group max by redux.sync
// on the bit patterns instead of shuffles: slower (kv_fp8 1.67 -> 2.13 us). 16 row warps of 2 vectors a copy (one block
// an SM) in place of 8 of 4, two runs: V4-Pro hc_pre from partials at 64 tokens 4.94 -> 5.09 us, hc_head at 64 tokens
// 7.04 -> 8.08, at 4096 184.9 -> 200.4 (V4-Flash 126.8 -> 144.3).
template <bool kPre>
__global__ void __launch_bounds__(block_fin_threads(kPre), 2) finalize_block_kernel(const FinalizeArgs args) {
    prefetch_token_inputs<kPre>(args, blockIdx.x, threadIdx.x, blockDim.x);
    dsv4::await_previous_kernel();
    __shared__ float warp_sums[kBlockFinRowWarps][dsv4::kWarpSize];
    __shared__ __align__(16) float row_sums[kBlockFinRowWarps];
    static_assert(kBlockFinRowWarps == 8, "the row sums are added as two float4");
    __shared__ float4 weight_smem[kMaxDim / 4];  // the norm weights, each thread's own vectors (cp.async)

    const int64_t t = blockIdx.x;
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const bool row_warp = !kPre || warp < kBlockFinRowWarps;  // known for hc_head: its instance spilled otherwise
    const bool norm = kPre || args.norm_weight != nullptr;
    const MixConstants constants = load_mix_constants<kPre>(args, lane);

    // The row's loads: X, right after the partials' (both L2 hits, warmed by prefetch_token_inputs), and for the norm
    // its weights (cp.async). hc_pre issues the weights once its partials have arrived (after the barrier below): the
    // post / comb warp's Sinkhorn (~40 dependent divisions) starts from the partials, and the weights issued before
    // them delayed it (see above). hc_head has no Sinkhorn and issues both at once. hc_pre issued X after the barrier
    // too (then from DRAM, before the prefetch, that took V4-Pro x 64 tokens 6.37 -> 5.90 us); X here instead, H100,
    // the bench's timing, three runs, hc_pre from partials at V4-Pro x 1 / 64 / 127 tokens: 4.28-4.30 / 4.69-4.73 /
    // 6.79-6.83 us (copy/ours 0.77 / 0.78 at 64 / 127) -> 4.25-4.32 / 4.41-4.46 / 6.30-6.35 (0.82 / 0.84), V4-Flash x
    // 64 4.25 -> 4.10; with the weights issued here as well, 4.42-4.46 / 5.41-5.45 / 6.74-6.80. hc_head's weights
    // after the barrier too, at V4-Pro x 1 / 64 / 127 tokens: timed alone (--only mhc_head, three runs) 4.61-4.62 /
    // 6.64-6.68 / 11.35-11.42 us against 4.61-4.68 / 6.88-6.91 / 11.75-11.79 (V4-Flash x 64 5.43 against 5.62), but
    // timed after the other mhc cases (two runs) 4.65 / 6.86 against 4.68-4.69 / 6.84-6.88: not kept.
    const Vec16* xt = args.x + t * kHc * args.vecs;
    Vec16 raw[kBlockFinVecs][kHc];
    auto load_x = [&] {
#pragma unroll
        for (int v = 0; v < kBlockFinVecs; ++v) {
            const int64_t idx = tid + int64_t(v) * kBlockFinRowThreads;
#pragma unroll
            for (int i = 0; i < kHc; ++i)
                raw[v][i] = idx < args.vecs ? __ldg(xt + i * args.vecs + idx) : make_uint4(0, 0, 0, 0);
        }
    };
    auto load_weights = [&] {
        if (norm) {
            for (int64_t idx = tid; idx < args.vecs; idx += kBlockFinRowThreads) {
                cp_async16(weight_smem + 2 * idx, args.norm_weight + 2 * idx, true);
                cp_async16(weight_smem + 2 * idx + 1, args.norm_weight + 2 * idx + 1, true);
            }
            cp_async_commit();
        }
    };
    if (row_warp) {
        // Partials: row warp w sums splits w, w + 8, ... in order, kFinPartialBatch loads in flight at once.
        constexpr int kRow = fin_partial_row(kPre);
        const float* pt = args.partial + t * kRow + lane;
        const int64_t split_stride = args.n_tokens * kRow;
        const bool has_partial = lane < kRow;
        float part[kFinPartialBatch];
#pragma unroll
        for (int b = 0; b < kFinPartialBatch; ++b) {
            const int s = warp + b * kBlockFinRowWarps;
            part[b] = has_partial && s < args.splits ? __ldg(pt + s * split_stride) : 0.0f;
        }
        load_x();
        if constexpr (!kPre) load_weights();
        float sum = 0.0f;
#pragma unroll
        for (int b = 0; b < kFinPartialBatch; ++b) sum += part[b];
        for (int first = warp + kFinPartialBatch * kBlockFinRowWarps; has_partial && first < args.splits;
             first += kFinPartialBatch * kBlockFinRowWarps) {  // kernel 1's partials can have more splits
#pragma unroll
            for (int b = 0; b < kFinPartialBatch; ++b) {
                const int s = first + b * kBlockFinRowWarps;
                part[b] = s < args.splits ? __ldg(pt + s * split_stride) : 0.0f;
            }
#pragma unroll
            for (int b = 0; b < kFinPartialBatch; ++b) sum += part[b];
        }
        warp_sums[warp][lane] = sum;
    }
    __syncthreads();
    if (kPre && row_warp) load_weights();

    // Every warp adds the row warps' sums in order (the same total on each) and forms the mix.
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kBlockFinRowWarps; ++w) total += warp_sums[w][lane];
    const float mix = mix_value<kPre>(total, args);
    if (!row_warp) {
        if constexpr (kPre) post_and_comb(mix, constants, lane, t, args);
        return;
    }
    float pre[kHc];
    pre_weights(mix, constants, lane, args.hc_eps, pre);

    // y = bf16(sum_i pre_i X_i), kept packed in raw[v][0].
    float sumsq = 0.0f;  // zero from vectors past the row
#pragma unroll
    for (int v = 0; v < kBlockFinVecs; ++v) raw[v][0] = weighted_sum(raw[v], pre, sumsq);

    float inv_rms = 1.0f;
    if (norm) {
        // Sum over the row warps only (named barrier 1): the post / comb warp may still be running or gone.
        sumsq = dsv4::warp_reduce_sum(sumsq);
        if (lane == 0) row_sums[warp] = sumsq;
        asm volatile("bar.sync 1, %0;" ::"n"(kBlockFinRowThreads) : "memory");
        // The 8 warp sums, added in the order a butterfly over them would (the value every lane had when this was
        // dsv4::warp_reduce_sum of row_sums[lane]), from shared memory without its 5 dependent shuffles.
        const float4 r0 = reinterpret_cast<const float4*>(row_sums)[0];
        const float4 r1 = reinterpret_cast<const float4*>(row_sums)[1];
        sumsq = ((r0.x + r1.x) + (r0.z + r1.z)) + ((r0.y + r1.y) + (r0.w + r1.w));
        inv_rms = rms_scale(sumsq, args.dim, args.norm_eps);
        cp_async_wait<0>();  // this thread's own weight vectors
    }
#pragma unroll
    for (int v = 0; v < kBlockFinVecs; ++v) {
        const int64_t idx = tid + int64_t(v) * kBlockFinRowThreads;
        store_outputs<kPre>(args, t, idx, idx < args.vecs, raw[v][0], norm, inv_rms, weight_smem + 2 * idx);
    }
}

// hc_pre's large batches: a warp per token (kFinWarps tokens per block, no block-wide barrier), so one token's
// partial sums and Sinkhorn overlap the others' streaming. Shared memory: kFinWarps rows of vecs 16-byte vectors, each
// warp's bf16 y between the pass that forms it (and its sum of squares) and the pass that normalizes and quantizes
// it. 128 registers, so 4 blocks (16 warps) fit an SM as their y rows do at V4-Pro (168 registers gave 12 warps:
// hc_pre from partials 144 -> 141 us at V4-Pro x 4096, 85.7 -> 82.6 us at V4-Flash). A resident grid with each warp
// walking tokens and the next token's first batch in flight during pass 2 was slower (152 us). Measured and not kept:
// the first wave's blocks 132-263 and 396-527 starting 4 / 8 / 14 us late (as sample.cu's stagger_first_wave, so that
// some warps stream X while others sum their partials), hc_pre from partials at V4-Pro x 4096 on the H100, copy/ours
// 0.80 / 0.79 / 0.75 against 0.80 (two runs each).
// Pass 2 took its vectors one a lane at a time, each waiting on its norm weights from L2 (28 KB a token at V4-Pro),
// and post_and_comb ran before pass 1 (X's first batch in flight). H100, the bench's timing, two or three runs, hc_pre
// from partials at V4-Pro x 2048 / 4096 tokens 70.6-70.8 / 136.2-136.4 us (copy/ours 0.78 / 0.80): pass 2 two
// vectors a lane at a time, loads first, 69.7 / 132.9-133.0 (four: 70.1 / 133.6); post_and_comb then after pass 2
// 68.5-68.7 / 132.3-132.6, or between the passes (kept) 66.7 / 130.9 (0.83 / 0.83); before pass 1's first weighted
// sums, with its second batch in flight, spilled 204 bytes. V4-Flash x 4096: 81.7 us, 78.6 with pass 2 in pairs and
// 78.2-78.3 with post_and_comb after it as well. With those two, a warp per token from half of warp_fin_min_tokens:
// V4-Pro x 1024 39.2 us against 33.6-33.8, V4-Flash x 512 17.6 against 13.6. Then, against 66.6-66.7 / 130.7 us
// (V4-Flash x 1024 / 4096 24.4 / 78.2; two runs, one at V4-Flash): kFinNormVecs 1 67.9 / 140.5-140.7 (25.7 / 79.1),
// 4 66.8-67.0 / 131.2 (24.8 / 78.8); kFinBatch 3 67.6-67.8 / 132.4-132.5 (24.8 / 79.0), 5 66.9-67.1 / 131.3-131.6
// (25.0 / 80.0), none spilling.
__global__ void __launch_bounds__(kFinThreads, 4) finalize_warp_kernel(const FinalizeArgs args) {
    dsv4::await_previous_kernel();
    constexpr bool kPre = true;
    extern __shared__ Vec16 y_rows[];  // [kFinWarps][vecs]
    const int lane = threadIdx.x % dsv4::kWarpSize, warp = threadIdx.x / dsv4::kWarpSize;
    const int64_t t = int64_t(blockIdx.x) * kFinWarps + warp;
    if (t >= args.n_tokens) return;
    Vec16* y_row = y_rows + warp * args.vecs;
    const Vec16* xt = args.x + t * kHc * args.vecs;
    const MixConstants constants = load_mix_constants<kPre>(args, lane);

    // X batch b: vectors b * 32 * kFinBatch + lane + 32 v of the 4 copies. The first is in flight while the
    // partials are summed and the weights formed.
    constexpr int kBatchVecs = kFinBatch * dsv4::kWarpSize;
    Vec16 raw[kFinBatch][kHc];
    auto load = [&](int64_t first) {
#pragma unroll
        for (int v = 0; v < kFinBatch; ++v) {
            const int64_t idx = first + lane + v * dsv4::kWarpSize;
#pragma unroll
            for (int i = 0; i < kHc; ++i)
                raw[v][i] = idx < args.vecs ? load_stream(xt + i * args.vecs + idx) : make_uint4(0, 0, 0, 0);
        }
    };
    load(0);

    // Lane c sums partial c over the splits in order.
    constexpr int kRow = fin_partial_row(kPre);
    const float* pt = args.partial + t * kRow + lane;
    const int64_t split_stride = args.n_tokens * kRow;
    float total = 0.0f;
    if (lane < kRow) {
#pragma unroll 8
        for (int s = 0; s < args.splits; ++s) total += __ldg(pt + s * split_stride);
    }
    const float mix = mix_value<kPre>(total, args);
    float p[kHc];
    pre_weights(mix, constants, lane, args.hc_eps, p);

    // Pass 1: y and its sum of squares; y parked in y_row.
    float sumsq = 0.0f;  // zero from vectors past the row
    for (int64_t first = 0; first < args.vecs; first += kBatchVecs) {
        Vec16 cur[kFinBatch][kHc];
#pragma unroll
        for (int v = 0; v < kFinBatch; ++v)
#pragma unroll
            for (int i = 0; i < kHc; ++i) cur[v][i] = raw[v][i];
        load(first + kBatchVecs);
#pragma unroll
        for (int v = 0; v < kFinBatch; ++v) {
            const int64_t idx = first + lane + v * dsv4::kWarpSize;
            const Vec16 y = weighted_sum(cur[v], p, sumsq);
            if (idx < args.vecs) y_row[idx] = y;
        }
    }

    // post and comb (the Sinkhorn), which y does not need, between the passes; then pass 2: RMSNorm + FP8 from y_row,
    // kFinNormVecs vectors a lane at a time, their y and norm weights (L2) loaded first.
    sumsq = dsv4::warp_reduce_sum(sumsq);
    post_and_comb(mix, constants, lane, t, args);
    const float inv_rms = rms_scale(sumsq, args.dim, args.norm_eps);
    __syncwarp();
    for (int64_t first = 0; first < args.vecs; first += kFinNormVecs * dsv4::kWarpSize) {
        Vec16 y[kFinNormVecs];
        float4 weights[kFinNormVecs][2];
#pragma unroll
        for (int v = 0; v < kFinNormVecs; ++v) {
            const int64_t idx = first + lane + v * dsv4::kWarpSize;
            const bool valid = idx < args.vecs;
            y[v] = valid ? y_row[idx] : make_uint4(0, 0, 0, 0);
            weights[v][0] = valid ? __ldg(args.norm_weight + 2 * idx) : make_float4(0, 0, 0, 0);
            weights[v][1] = valid ? __ldg(args.norm_weight + 2 * idx + 1) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int v = 0; v < kFinNormVecs; ++v) {
            const int64_t idx = first + lane + v * dsv4::kWarpSize;
            store_outputs<kPre>(args, t, idx, idx < args.vecs, y[v], true, inv_rms, weights[v]);
        }
    }
}

// ---- single read (large batches): one resident launch --------------------------------------------------------------

// hc_head with X read once, for large batches: CTA (c, g) owns dims 128c .. 128c + 127 of the 4 copies and walks the
// 32-token windows g, g + groups, ... in a software pipeline. Iteration j loads window j + kResLead, forms window j's
// mix sums over its dims, forms y of window j - kResMixSkew from the pre weights, and finishes window j - kResMixSkew -
// kResNormSkew (RMSNorm). Each token has one owner CTA in its group, which sums the chunks' parts (mix sums and sum of
// X^2, later the sums of y^2) and forms the values every CTA needs: the 4 pre weights, then the RMSNorm's scale.
// The parts reach the owners through counters (a CTA adds 1 once its parts are written: fence + atomic add; the owner
// polls on relaxed loads, then acquires once: an acquiring load invalidates the SM's L1). The owners' values are their
// own signal: the workspace holds kResUnset until they are stored, and the readers poll the values themselves.
// The skews let a window's values arrive while the CTA works on other windows. y is stored unnormalized into the
// output rows at its phase and copied back into shared memory (cp.async, from L2) at its outputs' phase, so that
// shared memory holds 6 windows of X (a mix skew of 4) rather than 5 and 4 of y (the norm skew costs no memory).
// Warps: 16 workers take every phase (a barrier apart); a publish warp publishes the parts the workers wrote in the
// previous iteration (its fence waits for their stores); a poll warp polls the owners' values of the next iteration
// into shared memory; 2 owner warps, at no barrier, take the tasks of the tokens their CTA owns.
// The mix runs on the tensor cores: bf16 X times fn split into 3 bf16 terms (24 significant bits, B fragments held
// in registers for the whole launch), and the sums of X^2 from X times its own transpose. Indices are 32-bit and
// advance by a stride a window (64-bit index arithmetic was ~150 of a worker warp's ~690 instructions a window).
// Every CTA must be resident at once: one per SM (220 KB of shared memory), groups x chunks <= the SM count. The
// launch is cooperative, so a device that cannot hold the grid (MPS or a green context with fewer SMs than assumed)
// refuses it, and hc_head runs as two kernels instead of waiting forever on CTAs that never start.
// On the H100 (132 SMs), hc_head in us at 1024 / 2048 / 4096 tokens, same run, against skews of 3 with y in shared
// memory and one signal warp both publishing and polling (3 owner warps): V4-Flash 28.8 / 49.4 / 90.1 against 30.6 /
// 51.9 / 93.9; V4-Pro 47.1 / 81.7 / 153.4 against 50.5 / 87.4 / 171.4 (150-155 at 4096 over runs). %globaltimer
// stamps of that version (V4-Pro x 4096, group 0): an iteration took 2.6 us where the workers alone take 1.8, and a
// window's pre weights reached every CTA 4.5 us after the barrier past its mix (0.9 us to the counter's last add, 2.1
// to the last owner's store, 1.3 to the last poll), against 2 iterations of skew. With skews of 4 the signal warp
// became the limit: after each barrier, 1.2 us of fence and atomics before its polls (0.5 us a round trip) began. On
// the way, V4-Pro x 4096: skews of 4 / 4 (one signal warp) 158.7, 4 / 3 165.8, 3 / 4 183.6, 4 / 5 160.4; the polls of
// pre and of the scale in one loop and issued before the fence 157.7; then the publish warp: 152-154; then a norm
// skew of 5 and polls without a nanosleep between them, 3 runs: 150.6-150.8 against 153.0-153.8 (1024 tokens: 46.1-
// 46.8 against 46.8-47.7; either alone 151.0-152.8). Not kept: a publish warp as a 21st warp (3 owners; 80 registers)
// 184-185 with skews of 3; 4 or 7 owner warps (80 registers) 172 / 189 against 172 with skews of 3; the memset
// replaced by a kernel overlapping its neighbours (programmatic dependent launch) 153.4 / 154.0 against 154.5 /
// 152.7; acquiring polls in the owners 152.3 against 152.4-155.2.
// Without the publish warp's fence (timing only) V4-Pro x 4096 / 1024 took 142.7-144.8 / 45.2-45.7 us against 149.4-
// 153.2 / 46.2-47.1 (same runs), but only because the owners then read the parts before they landed: with the fence
// dropped and the parts their own signals (the owners, told by the counter, re-read until none is kResUnset; the whole
// workspace set by the memset), 164.1-165.2 / 48.7-49.2 against 151.2-151.6 / 46.5-46.7 (V4-Flash 85.3 / 28.3 against
// 86.4 / 29.1; the larger memset alone: 153.7-154.1 / 46.7-47.3). The fence waits out the parts' stores, which the
// chain must wait for anyway. Measured and not kept, 3 runs each, us at 4096 / 1024:
// fence.acq_rel.gpu in place of __threadfence 150.8-152.0 / 46.3-47.3; red.release.gpu adds without the fence 154.4-
// 155.8 / 47.9-48.3; the mix parts published in their own iteration (the publish warp waiting at a named barrier
// for the 5 warps that store them, then fence and add; the y^2 parts at the next top barrier) 153.4-156.2 / 46.7, and
// the y^2 parts likewise (waiting for every worker past its y phase) 180.6-183.2 / 51.5-52.6 (its late fence held
// the next top barrier); the outputs' phase before the y phase, so that fewer stores are in flight at the fence,
// 152.7-153.3 / 46.9-47.1; the parts as their own signals (the whole workspace set to kResUnset, the owners polling
// them; no counters, no publish warp, 19 warps) 179.6-180.0 / 49.3-50.2, with 3 owner warps 188.5-189.0 / 51.4-53.3.
// Before (one signal warp, 3 owners, skews of 3), against every CTA summing every
// token's parts itself (the version before owners): V4-Flash (32 chunks, 4 groups) 30.5 / 51.2 / 93.2 against 32.2 /
// 53.3 / 92.2; V4-Pro (56 chunks, 2 groups: 64 windows a CTA at 4096 tokens) 49.9 / 88.7 / 171.5 against 53.8 / 96.9 /
// 178.7 (the two kernels: V4-Flash 33.3 / 57.4 / 103.0, V4-Pro 54.2 / 107.0 / 201.9). That version's workers issued
// ~640 instructions a warp a window, ~165 of them to sum the 56 chunks' parts and form pre and the scale, which every
// CTA repeated for every token (and its parts' loads read more from L2 than X itself).
// With owners and skews of 3, timing-only variants at V4-Pro x 4096: no owner work and no waits 125 us, owners running
// but not waited for 127: the owners' chain (counter, acquire, parts' loads, sums, store, the reader's poll: ~5 us)
// outran the two iterations the skews gave it (with skews of 4 / 4 and y from L2: 134 us without waits).
// X re-read from L2 for y instead (2 slots; its 4 loads a lane issued before the mix) was slower (V4-Pro / V4-Flash
// x 4096, us, against 169.8 / 93.0): 187.8 / 105.7 at the same skews, 194.4 / 111.9 with skews of 5 and 4, 195.4 /
// 112.4 with that and loads 2 windows ahead; each skew iteration also adds one to the pipeline's fill and drain.
// Owner designs measured and not kept (V4-Pro x 4096, us): owners publishing through counters too (fence + atomic
// add, the signal warp polling those) 192-196; an owner warp taking a window's two tasks at once in half warps 195-198
// (and 195 with acquiring polls); the parts themselves polled by the owners (no counters, the whole workspace set to
// kResUnset by the memset, relaxed stores) 180; the pre and scale tasks in one code path 184; the owners' acquiring
// load replaced by a fence after the relaxed polls 185; 2 owner warps 195 (with the half-warp tasks); a signal
// warpgroup (setmaxnreg: 112 registers for the workers) 189 against 178 before owners; the parts published by the
// signal warp mid-iteration, as soon as warps 0..4 or all workers arrive at barriers 3 / 4, 210.
// Before owners:
// Measured on the way (V4-Pro x 4096, us): every lane's fp32 fma mix, the parts summed by loops of dependent loads,
// the signal role on worker thread 0 (its fences stalled the mix): 477; a signal warp, the parts' loads batched: 285;
// the parts' loads issued before the mix: 247; fn's smem rows without 2-way bank conflicts and a reduce-scatter of
// the mix sums: 226; the mix on the tensor cores: 254 with 4 sigmoids a lane, 217 with one; loads 1 window ahead
// and skews of 3: 212.5. Without the counters' waits (timing only) 229 against 255, without the parts' loads 188,
// loads alone 83: the per-window phases, not X's stream, set the time. Then (same run, 215 before): relaxed polls and
// the norm weights in shared memory 198-201, 32-bit indices with 4-chunk loads of the sums of squares 194; the mix's
// ldmatrix issued right after the barrier, ahead of the parts' loads and the X copies (ncu: 6% of samples stalled on
// the first HMMA's operands) 191 -> 177 (V4-Flash unchanged, 92.5 -> 92.1). Not kept on top of that: the mix run in
// the drain iterations too, without its branch, 174.4 (it reads slots never written); window jy's X also loaded
// before the parts: a 104-byte spill; the 11 warps that do not sum the red rows arriving at their barrier rather than
// waiting (bar.arrive), and polls without the nanosleep: 175-176 against 177-180, within the runs' spread.
// ncu after these (V4-Pro x 4096): ~640 instructions a worker warp a window, issue 47% busy, stalls spread over fixed
// latencies (22% of samples), issue contention (28%), shared-memory and MIO queues (21%), the two barriers (9%).
// The register cap (96: 5 of the 17 warps on one scheduler) makes the compiler re-derive thread indices each window.
// Tried and not kept (V4-Pro / V4-Flash x 4096, us, against 194 / 93): two CTAs an SM of 16-token windows (8 worker
// warps, 4 groups at V4-Pro, 96 registers with a 36-byte spill) 250 / 128; skews of 2 (4 X slots) 207 / 98; pre and
// the RMSNorm's scale formed once a token by 8 warps while the other 8 run the mix (4 K steps each) 207 / 106: the
// weight warps wait out the parts' L2 latency with nothing to overlap it (ncu: 14% of samples at the barrier after),
// where every warp's own parts' loads hide behind its mix.
constexpr int kResTokens = 32;                             // tokens per window: two m16 tiles
constexpr int kResChunkVecs = kPostMixDims / kBf16PerVec;  // 16 vectors of a copy's 128 dims
constexpr int kResWorkers = kResTokens * kResChunkVecs;    // 512: 16 lanes a token
constexpr int kResWorkerWarps = kResWorkers / dsv4::kWarpSize;
constexpr int kResPollWarp = kResWorkerWarps, kResPublishWarp = kResWorkerWarps + 1;
constexpr int kResOwnerWarps = 2;  // 20 warps in all: 5 a scheduler, which leaves 96 registers (21: 80)
constexpr int kResThreads = (kResPublishWarp + 1 + kResOwnerWarps) * dsv4::kWarpSize;
constexpr int kResWarpSteps = kHc * kPostMixDims / 16 / kResWorkerWarps;  // 2 K steps of 16 a warp in the mix
constexpr int kResOwnerLoads = kMaxDim / kPostMixDims / dsv4::kWarpSize;  // chunk parts an owner lane sums: 2
constexpr int kResLead = 1;       // windows loaded ahead of the mix
constexpr int kResMixSkew = 4;    // iterations from a window's mix to its y: its parts are published at the next one
constexpr int kResNormSkew = 5;   // iterations from a window's y to its outputs, likewise
constexpr int kResXSlots = kResLead + kResMixSkew + 1;  // X of a window lives from its load to its y
constexpr int64_t kResMinTokens = 1024;
constexpr int kResMinGroups = 2;
static_assert(kMaxDim / kPostMixDims == kResOwnerLoads * dsv4::kWarpSize, "an owner lane's chunks");
static_assert(kResMixSkew >= 2 && kResNormSkew >= 2, "parts are published an iteration after they are written");

struct ResidentArgs {
    FinalizeArgs fin;      // outputs, x and the weights' constants (fin.partial unused)
    const float4* fn;      // [num_mix, hc * dim / 4] fp32
    float4* mix_part;      // [windows * kResTokens, chunks] mix sums 0..3 of a token over a chunk
    float* sq_part;        // [windows * kResTokens, chunks] sum of X^2 of a token over a chunk
    float* ysq_part;       // [windows * kResTokens, chunks] sum of y^2 of a token over a chunk
    // Set to all-ones bytes before the launch (kResUnset):
    float4* pre;           // [windows * kResTokens] pre weights of a token, from its owner
    float* inv_rms;        // [windows * kResTokens] the RMSNorm's scale of a token, from its owner
    int* mix_done;         // [windows] -1 + chunks whose mix parts are written
    int* y_done;           // [windows] -1 + chunks whose y^2 parts are written
    int chunks;            // dim / 128
    int groups;            // CTAs per chunk
    int windows;           // ceil(n_tokens / kResTokens)
};

struct ResidentSmem {
    Vec16 x[kResXSlots][kResTokens][kHc][kResChunkVecs];  // bf16 X of a window over the CTA's dims, vector v of
                                                          // token t at v ^ (t % 8) (ldmatrix without bank conflicts)
    Vec16 y[2][kResTokens][kResChunkVecs];  // bf16 y of window jo (by j % 2), read back from the output rows
    float red[kHeadMix + 1][kResTokens][kResWorkerWarps + 1];  // each warp's mix sums and sum of X^2 of a window
    float4 norm_weight[2 * kResChunkVecs];                // fp32 norm weights of the CTA's 128 dims
    float4 pre[2][kResTokens];                            // pre weights of window jy (by j % 2), from the owners
    float inv_rms[2][kResTokens];                         // RMSNorm scales of window jo, likewise
};

// The owners' values start as this bit pattern, a NaN that arithmetic never yields (the GPU's NaN is 0x7FFFFFFF), so a
// value read as anything else is written; the counters start at the same bits, -1.
constexpr unsigned kResUnset = 0xFFFFFFFFu;
__device__ __forceinline__ bool res_set(float v) { return __float_as_uint(v) != kResUnset; }

// c += a * b for one m16n8k16 tile: bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values of fn as 3 bf16x2 B-fragment words, hi + mid + lo (24 significant bits): word tm holds term tm of
// f[0] (low half) and of f[1].
__device__ __forceinline__ void fn_terms(const float (&f)[2], uint32_t (&words)[3]) {
    __nv_bfloat16 term[3][2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        float rest = f[e];
#pragma unroll
        for (int tm = 0; tm < 3; ++tm) {
            term[tm][e] = __float2bfloat16_rn(rest);
            rest -= __bfloat162float(term[tm][e]);
        }
    }
#pragma unroll
    for (int tm = 0; tm < 3; ++tm)
        words[tm] = uint32_t(__bfloat16_as_ushort(term[tm][0])) | uint32_t(__bfloat16_as_ushort(term[tm][1])) << 16;
}

// Every lane of a 16-lane group gets the group's sum (the same bits on each: fp32 addition commutes).
__device__ __forceinline__ float group16_sum(float v) {
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    return v;
}

// Spins on relaxed loads (an acquiring load invalidates the SM's L1 each time), then acquires once.
__device__ __forceinline__ void wait_count(const int* p, int target) {
    int v;
    for (;;) {
        asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
        if (v >= target) break;
    }
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
}

// Relaxed (strong) accesses to the owners' values, which one warp stores and the poll warps poll.
__device__ __forceinline__ float4 load_relaxed(const float4* p) {
    float4 v;
    asm volatile("ld.relaxed.gpu.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}
__device__ __forceinline__ float load_relaxed(const float* p) {
    float v;
    asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void store_relaxed(float4* p, float4 v) {
    asm volatile("st.relaxed.gpu.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}
__device__ __forceinline__ void store_relaxed(float* p, float v) {
    asm volatile("st.relaxed.gpu.global.f32 [%0], %1;" ::"l"(p), "f"(v) : "memory");
}
__device__ __forceinline__ bool res_set(float4 v) {
    return res_set(v.x) && res_set(v.y) && res_set(v.z) && res_set(v.w);
}

// Owner warp k of CTA (c, g): tasks k, k + kResOwnerWarps, ... of the group's windows in the order their inputs are
// published (task 2j: the pre weights of window j, whose mix parts are published at iteration j + 1; task 2j + 1: the
// RMSNorm scales of window j - kResMixSkew, whose y^2 parts are published then too). CTA c owns the pre weights of
// token slots t with t % chunks = c and the scales of those with chunks - 1 - t % chunks = c (at V4-Pro, CTAs 0..31
// and 24..55). For each it waits for the window's counter, sums the token's parts over the chunks (lane l: chunks l,
// l + 32) and stores the value every CTA of the group needs; the poll warps poll the values themselves (kResUnset).
__device__ __forceinline__ void resident_owner(const ResidentArgs& args, int c, int g, int n_local, int owner_warp,
                                               int lane) {
    const FinalizeArgs& fin = args.fin;
    const bool norm = fin.norm_weight != nullptr;
    const float hc_scale = __ldg(fin.hc_scale);
    const float own_base = __ldg(fin.hc_base + lane % kHc);  // lane i < 4 forms pre_i
    const int tasks = 2 * (n_local + kResMixSkew);
#pragma unroll 1
    for (int n = owner_warp; n < tasks; n += kResOwnerWarps) {
        const bool pre_task = n % 2 == 0;
        const int j = pre_task ? n / 2 : n / 2 - kResMixSkew;
        if (j < 0 || j >= n_local || (!pre_task && !norm)) continue;
        const int first = pre_task ? c : args.chunks - 1 - c;  // the first owned slot
        if (first >= kResTokens) continue;
        const int window = g + j * args.groups;
        if (lane == 0) wait_count((pre_task ? args.mix_done : args.y_done) + window, args.chunks - 1);
        __syncwarp();
#pragma unroll 1
        for (int t = first; t < kResTokens; t += args.chunks) {
            const int token = window * kResTokens + t, row = token * args.chunks;
            if (pre_task) {
                float4 m = {0.0f, 0.0f, 0.0f, 0.0f};
                float sq = 0.0f;
#pragma unroll
                for (int u = 0; u < kResOwnerLoads; ++u) {
                    const int chunk = lane + u * dsv4::kWarpSize;
                    if (chunk < args.chunks) {
                        const float4 v = __ldcg(args.mix_part + row + chunk);
                        m.x += v.x, m.y += v.y, m.z += v.z, m.w += v.w;
                        sq += __ldcg(args.sq_part + row + chunk);
                    }
                }
#pragma unroll
                for (int offset = 16; offset > 0; offset >>= 1) {
                    m.x += __shfl_xor_sync(0xFFFFFFFFu, m.x, offset), m.y += __shfl_xor_sync(0xFFFFFFFFu, m.y, offset);
                    m.z += __shfl_xor_sync(0xFFFFFFFFu, m.z, offset), m.w += __shfl_xor_sync(0xFFFFFFFFu, m.w, offset);
                    sq += __shfl_xor_sync(0xFFFFFFFFu, sq, offset);
                }
                const int i = lane % kHc;
                const float own_mix = i == 0 ? m.x : i == 1 ? m.y : i == 2 ? m.z : m.w;
                const float mix_rms = rms_scale(sq, fin.k, fin.mix_eps);
                const float own_pre = __fadd_rn(
                    sigmoid(__fadd_rn(__fmul_rn(__fmul_rn(own_mix, mix_rms), hc_scale), own_base)), fin.hc_eps);
                const float4 pre = {__shfl_sync(0xFFFFFFFFu, own_pre, 0), __shfl_sync(0xFFFFFFFFu, own_pre, 1),
                                    __shfl_sync(0xFFFFFFFFu, own_pre, 2), __shfl_sync(0xFFFFFFFFu, own_pre, 3)};
                if (lane == 0) store_relaxed(args.pre + token, pre);
            } else {
                float sq = 0.0f;
#pragma unroll
                for (int u = 0; u < kResOwnerLoads; ++u) {
                    const int chunk = lane + u * dsv4::kWarpSize;
                    if (chunk < args.chunks) sq += __ldcg(args.ysq_part + row + chunk);
                }
#pragma unroll
                for (int offset = 16; offset > 0; offset >>= 1) sq += __shfl_xor_sync(0xFFFFFFFFu, sq, offset);
                if (lane == 0) store_relaxed(args.inv_rms + token, rms_scale(sq, fin.dim, fin.norm_eps));
            }
        }
    }
}

__global__ void __launch_bounds__(kResThreads, 1) resident_head_kernel(const ResidentArgs args) {
    extern __shared__ __align__(16) unsigned char res_smem_raw[];
    ResidentSmem& s = *reinterpret_cast<ResidentSmem*>(res_smem_raw);
    const FinalizeArgs& fin = args.fin;
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const int c = blockIdx.x % args.chunks, g = blockIdx.x / args.chunks;
    const int n_local = g < args.windows ? (args.windows - 1 - g) / args.groups + 1 : 0;
    const int64_t vecs = fin.vecs;
    const int64_t chunk_vec = int64_t(c) * kResChunkVecs;
    const bool norm = fin.norm_weight != nullptr;
    const int iterations = n_local + kResMixSkew + kResNormSkew;
    auto window_of = [&](int j) { return g + j * args.groups; };
    // The workers, the poll warp and the publish warp meet at the top of each iteration; the owners at no barrier.
    auto top_barrier = [] { asm volatile("bar.sync 1, %0;" ::"n"(kResWorkers + 2 * dsv4::kWarpSize) : "memory"); };

    if (norm && tid < 2 * kResChunkVecs) s.norm_weight[tid] = __ldg(fin.norm_weight + 2 * chunk_vec + tid);
    dsv4::await_previous_kernel();

    if (warp > kResPublishWarp) {
        resident_owner(args, c, g, n_local, warp - kResPublishWarp - 1, lane);
        return;
    }
    if (warp == kResPublishWarp) {  // publishes the parts the workers wrote in the previous iteration
#pragma unroll 1
        for (int j = 0; j < iterations; ++j) {
            top_barrier();  // the workers' stores of iteration j - 1 are done
            const int i = j - 1, iy = i - kResMixSkew;
            const bool mix_written = i >= 0 && i < n_local, y_written = norm && iy >= 0 && iy < n_local;
            if (lane == 0 && (mix_written || y_written)) {
                __threadfence();
                if (mix_written) atomicAdd(args.mix_done + window_of(i), 1);
                if (y_written) atomicAdd(args.y_done + window_of(iy), 1);
            }
        }
        return;
    }
    if (warp == kResPollWarp) {  // polls the owners' values of the next iteration into shared memory
#pragma unroll 1
        for (int j = 0; j < iterations; ++j) {
            // Lane t: token slot t's values of iteration j (the workers read the other buffer meanwhile), polled until
            // no lane reads kResUnset.
            const int jy = j - kResMixSkew, jo = jy - kResNormSkew;
            const bool want_pre = jy >= 0 && jy < n_local, want_inv = norm && jo >= 0 && jo < n_local;
            const float4* pre_src = args.pre + window_of(want_pre ? jy : 0) * kResTokens + lane;
            const float* inv_src = args.inv_rms + window_of(want_inv ? jo : 0) * kResTokens + lane;
            for (bool have_pre = !want_pre, have_inv = !want_inv;;) {
                const float4 pre = have_pre ? float4{} : load_relaxed(pre_src);
                const float inv_rms = have_inv ? 0.0f : load_relaxed(inv_src);
                if (!have_pre && __all_sync(0xFFFFFFFFu, res_set(pre))) s.pre[j % 2][lane] = pre, have_pre = true;
                if (!have_inv && __all_sync(0xFFFFFFFFu, res_set(inv_rms)))
                    s.inv_rms[j % 2][lane] = inv_rms, have_inv = true;
                if (have_pre && have_inv) break;
            }
            top_barrier();
        }
        return;
    }

    // Warp w's part of the mix product: K steps 2w, 2w + 1 of 32 (copy w / 4, dims 32 (w % 4) .. + 31 of the chunk) on
    // the tensor cores, bf16 x bf16 -> fp32, fn (fp32) as 3 bf16 terms hi + mid + lo (24 significant bits). Lane (g,
    // q)'s B fragments: fn row g (rows 4..7 zero), k 2q, 2q + 1 and 2q + 8, 2q + 9 of each step, for the whole launch.
    const int mma_g = lane / 4, mma_q = lane % 4;
    uint32_t fn_frag[kResWarpSteps][3][2];  // [step][term][k half]
#pragma unroll
    for (int st = 0; st < kResWarpSteps; ++st) {
        const int ks = kResWarpSteps * warp + st, copy = ks / 8;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float f[2] = {0.0f, 0.0f};
            if (mma_g < kHeadMix) {
                const float* row = reinterpret_cast<const float*>(args.fn) +
                                   (int64_t(mma_g) * kHc + copy) * (8 * vecs) + 8 * chunk_vec + 16 * (ks % 8) +
                                   8 * half + 2 * mma_q;
                f[0] = __ldg(row), f[1] = __ldg(row + 1);
            }
            uint32_t words[3];
            fn_terms(f, words);
#pragma unroll
            for (int tm = 0; tm < 3; ++tm) fn_frag[st][tm][half] = words[tm];
        }
    }

    // Worker (token tid / 16, vector v = tid % 16): its X copies, y and outputs. Indices are 32-bit
    // (use_resident_head checks the sizes) and advance by a stride a window.
    const int row_token = tid / kResChunkVecs, row_vec = tid % kResChunkVecs;
    const int token_stride = args.groups * kResTokens;  // tokens between a CTA's consecutive windows
    const int part_stride = token_stride * args.chunks;
    const int x_stride = token_stride * kHc * static_cast<int>(vecs);
    // Of window j (the load lead's, the mix's), jy (y) and jo (outputs), kept as the loop advances.
    int load_token = g * kResTokens + row_token;  // window 0's, loaded before the loop
    int load_x = load_token * kHc * static_cast<int>(vecs) + static_cast<int>(chunk_vec) + row_vec;
    const int red_token = g * kResTokens + tid % kResTokens;  // red-sum thread (value tid / 32, token tid % 32)'s
    int red_part = red_token * args.chunks + c;
    int y_token = g * kResTokens + row_token - kResMixSkew * token_stride;
    int y_part = y_token * args.chunks + c;  // the token's part of this chunk
    int x_slot = 0, load_slot = 0, y_x_slot = kResXSlots - kResMixSkew;
    auto advance = [](int& slot, int slots) { slot = slot + 1 == slots ? 0 : slot + 1; };

    // The next window's X into its slot.
    auto load_window = [&](int j) {
        if (j < n_local) {
            const bool valid = load_token < fin.n_tokens;
            const Vec16* src = fin.x + (valid ? load_x : 0);
#pragma unroll
            for (int i = 0; i < kHc; ++i)
                cp_async16(&s.x[load_slot][row_token][i][row_vec ^ (row_token % 8)], src + i * vecs, valid);
        }
        cp_async_commit();  // one group an iteration, empty or not: wait_group counts stay uniform
        load_token += token_stride, load_x += x_stride;
        advance(load_slot, kResXSlots);
    };

#pragma unroll 1
    for (int j = 0; j < kResLead; ++j) load_window(j);
#pragma unroll 1
    for (int j = 0; j < iterations; ++j) {
        cp_async_wait<2 * (kResLead - 1)>();  // window j's copies (this thread's): each iteration commits two groups
        top_barrier();                  // ... everyone's; the previous iteration's phases are done
        const int jy = j - kResMixSkew, jo = jy - kResNormSkew;
        const bool y_phase = jy >= 0 && jy < n_local, out_phase = norm && jo >= 0 && jo < n_local;
        // Window j's A fragments first: issued after the global loads and copies below, they queued behind them.
        uint32_t a_frag[kResWarpSteps][2][4];  // [step][m tile]
#pragma unroll
        for (int st = 0; st < kResWarpSteps; ++st) {
            const int ks = kResWarpSteps * warp + st, copy = ks / 8;
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                // ldmatrix.x4: matrix l / 8 = (rows +8 if odd, k +8 if >= 2), lane l gives row l % 8's address.
                const int row = 16 * mt + (lane / 8 % 2) * 8 + lane % 8, kv = 2 * (ks % 8) + lane / 16;
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                             : "=r"(a_frag[st][mt][0]), "=r"(a_frag[st][mt][1]), "=r"(a_frag[st][mt][2]),
                               "=r"(a_frag[st][mt][3])
                             : "r"(dsv4::shared_address(&s.x[x_slot][row][copy][kv ^ (row % 8)])));
            }
        }
        // Window jo's y, stored unnormalized into the output rows at its y phase, back into shared memory (the same
        // thread stored it: program order makes it visible).
        const int o_token = y_token - kResNormSkew * token_stride;
        if (out_phase) {
            const bool valid = o_token < fin.n_tokens;
            cp_async16(&s.y[j % 2][row_token][row_vec], fin.y + (valid ? o_token * static_cast<int>(vecs) : 0) +
                                                            static_cast<int>(chunk_vec) + row_vec, valid);
        }
        cp_async_commit();
        load_window(j + kResLead);

        // Mix of window j: warp w's two K steps for both m tiles (tokens 0..15, 16..31). The sums of X^2 come from
        // the tensor cores too: X times its own transpose, whose diagonal lane (g, g / 2) holds (tokens g, g + 8).
        if (j < n_local) {
            float mix_acc[2][4] = {}, sq_acc[2][2][4] = {};  // [m tile][c]; [m tile][token block][c]
#pragma unroll
            for (int st = 0; st < kResWarpSteps; ++st) {
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    const uint32_t(&a)[4] = a_frag[st][mt];
#pragma unroll
                    for (int tm = 0; tm < 3; ++tm) mma_bf16(mix_acc[mt], a, fn_frag[st][tm][0], fn_frag[st][tm][1]);
                    mma_bf16(sq_acc[mt][0], a, a[0], a[2]);
                    mma_bf16(sq_acc[mt][1], a, a[1], a[3]);
                }
            }
            // Into red[value][token][warp]: lanes q < 2 hold mix columns 2q, 2q + 1 of rows g, g + 8.
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int t0 = 16 * mt + mma_g;
                if (mma_q < 2) {
                    s.red[2 * mma_q][t0][warp] = mix_acc[mt][0];
                    s.red[2 * mma_q + 1][t0][warp] = mix_acc[mt][1];
                    s.red[2 * mma_q][t0 + 8][warp] = mix_acc[mt][2];
                    s.red[2 * mma_q + 1][t0 + 8][warp] = mix_acc[mt][3];
                }
                if (mma_q == mma_g / 2) {
                    const bool odd = mma_g % 2;
                    s.red[kHeadMix][t0][warp] = odd ? sq_acc[mt][0][1] : sq_acc[mt][0][0];
                    s.red[kHeadMix][t0 + 8][warp] = odd ? sq_acc[mt][1][3] : sq_acc[mt][1][2];
                }
            }
        }
        asm volatile("bar.sync 2, %0;" ::"n"(kResWorkers) : "memory");  // the workers' red rows are in
        if (j < n_local && tid < (kHeadMix + 1) * kResTokens) {  // value tid / 32 of token tid % 32, warps in order
            const int value = tid / kResTokens, token = tid % kResTokens;
            float sum = s.red[value][token][0];
#pragma unroll
            for (int w = 1; w < kResWorkerWarps; ++w) sum += s.red[value][token][w];
            if (value < kHeadMix)
                reinterpret_cast<float*>(args.mix_part + red_part)[value] = sum;
            else
                args.sq_part[red_part] = sum;
        }

        // y of window jy: worker (token, vector) forms its 8 elements of y from the token's pre weights.
        if (y_phase) {
            const float4 pre4 = s.pre[j % 2][row_token];
            const float pre[kHc] = {pre4.x, pre4.y, pre4.z, pre4.w};
            Vec16 xv[kHc];
#pragma unroll
            for (int i = 0; i < kHc; ++i) xv[i] = s.x[y_x_slot][row_token][i][row_vec ^ (row_token % 8)];
            float ysq = 0.0f;
            const Vec16 y = weighted_sum(xv, pre, ysq);
            if (y_token < fin.n_tokens) fin.y[int64_t(y_token) * vecs + chunk_vec + row_vec] = y;
            if (norm) {
                ysq = group16_sum(ysq);
                if (row_vec == 0) args.ysq_part[y_part] = ysq;
            }
        }

        // Outputs of window jo: the RMSNorm with the token's scale.
        if (out_phase) {
            cp_async_wait<1>();  // the y copy (window j + kResLead's X may still be in flight)
            const float inv_rms = s.inv_rms[j % 2][row_token];
            store_outputs<false>(fin, o_token, chunk_vec + row_vec, o_token < fin.n_tokens,
                                 s.y[j % 2][row_token][row_vec], true, inv_rms, s.norm_weight + 2 * row_vec);
        }
        y_token += token_stride, y_part += part_stride, red_part += part_stride;
        advance(x_slot, kResXSlots), advance(y_x_slot, kResXSlots);
    }
}

// The single-read launch's workspace: per token its mix sums per chunk (float4), its pre weights (float4) and RMSNorm
// scale, 2 counters a window, then per token its sums of X^2 and of y^2 per chunk. The pre weights, scales and
// counters are contiguous: one memset sets them to kResUnset.
size_t resident_unset_bytes(int64_t windows) {
    return static_cast<size_t>(windows) * (kResTokens * (sizeof(float4) + sizeof(float)) + 2 * sizeof(int));
}
size_t resident_workspace_bytes(int64_t n_tokens, int64_t dim) {
    const int64_t windows = (n_tokens + kResTokens - 1) / kResTokens;
    const size_t part_bytes = (dim / kPostMixDims) * (sizeof(float4) + 2 * sizeof(float));  // a token's parts
    return resident_unset_bytes(windows) + static_cast<size_t>(windows) * kResTokens * part_bytes;
}

// Whether a CTA of resident_head_kernel fits an SM (its shared memory is above the default limit, so the attribute
// is raised first); false if a query fails.
bool resident_cta_fits() {
    static const bool fits = [] {  // the device does not change under a loaded library
        int ctas = 0;
        constexpr int smem = static_cast<int>(sizeof(ResidentSmem));
        if (cudaFuncSetAttribute(resident_head_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
                cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, resident_head_kernel, kResThreads, smem) !=
                cudaSuccess) {
            cudaGetLastError();  // a query failure is not sticky
            return false;
        }
        return ctas >= 1;
    }();
    return fits;
}

// CTAs per 128-dim chunk, one an SM: every CTA of the launch must be resident at once.
int resident_groups(int64_t dim) {
    return resident_cta_fits() ? static_cast<int>(dsv4::sm_count() / (dim / kPostMixDims)) : 0;
}

// The kernel's indices are 32-bit: a CTA's X offsets run to about kResLead + kResMixSkew + kResNormSkew + 1 windows'
// strides past the last token.
bool use_resident_head(int64_t n_tokens, int64_t dim) {
    const int groups = resident_groups(dim);
    const int64_t max_tokens = n_tokens + int64_t(kResLead + kResMixSkew + kResNormSkew + 2) * groups * kResTokens;
    return n_tokens >= kResMinTokens && groups >= kResMinGroups && max_tokens * kHc * (dim / kBf16PerVec) <= INT32_MAX;
}

// hc_head's outputs, inputs and constants (partial and splits unset).
FinalizeArgs head_args(const dsv4_mhc_head_params& p) {
    FinalizeArgs fin{};
    fin.y = static_cast<Vec16*>(p.y);
    fin.x = static_cast<const Vec16*>(p.x);
    fin.hc_scale = p.hc_scale;
    fin.hc_base = p.hc_base;
    fin.norm_weight = reinterpret_cast<const float4*>(p.norm_weight);
    fin.n_tokens = p.n_tokens;
    fin.vecs = p.dim / kBf16PerVec;
    fin.k = static_cast<float>(kHc * p.dim);
    fin.dim = static_cast<float>(p.dim);
    fin.hc_eps = p.hc_eps;
    fin.mix_eps = p.mix_eps;
    fin.norm_eps = p.norm_eps;
    return fin;
}

// hc_head by resident_head_kernel (use_resident_head); p's pointers and sizes are checked by the caller but for fn
// and the workspace. Where the device cannot hold the grid at once (fewer SMs than sm_count()), *launched is false
// and nothing is launched but a memset of the workspace: the caller then runs the two kernels; under stream capture,
// whose capture the refusal invalidated, that is an error.
int launch_resident_head(const dsv4_mhc_head_params& p, cudaStream_t stream, bool* launched) {
    *launched = false;
    DSV4_CHECK_FIELD_PTR(p, fn, 16);
    const size_t need = resident_workspace_bytes(p.n_tokens, p.dim);
    DSV4_CHECK_ARG(p.workspace_bytes >= need, DSV4_ERR_WORKSPACE, "workspace_bytes = %zu < %zu needed for %lld tokens",
                   p.workspace_bytes, need, (long long)p.n_tokens);
    DSV4_CHECK_FIELD_PTR(p, workspace, 16);
    ResidentArgs args{};
    args.fin = head_args(p);
    args.fn = reinterpret_cast<const float4*>(p.fn);
    args.chunks = static_cast<int>(p.dim / kPostMixDims);
    args.groups = resident_groups(p.dim);
    args.windows = static_cast<int>((p.n_tokens + kResTokens - 1) / kResTokens);
    const int64_t tokens = int64_t(args.windows) * kResTokens;
    args.mix_part = static_cast<float4*>(p.workspace);  // float4 arrays first: each stays 16-byte aligned
    args.pre = args.mix_part + tokens * args.chunks;
    args.inv_rms = reinterpret_cast<float*>(args.pre + tokens);
    args.mix_done = reinterpret_cast<int*>(args.inv_rms + tokens);
    args.y_done = args.mix_done + args.windows;
    args.sq_part = reinterpret_cast<float*>(args.y_done + args.windows);
    args.ysq_part = args.sq_part + tokens * args.chunks;
    DSV4_CHECK_CUDA(cudaMemsetAsync(args.pre, 0xFF, resident_unset_bytes(args.windows), stream));
    const cudaError_t status =
        dsv4::launch_kernel(dsv4::Launch::kCoResident, resident_head_kernel,
                            static_cast<unsigned>(args.groups * args.chunks), kResThreads, sizeof(ResidentSmem), stream,
                            args);
    if (status == cudaErrorCooperativeLaunchTooLarge) {
        cudaGetLastError();  // not sticky
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
            cudaGetLastError();
            // the refusal invalidated the capture: nothing can be launched in its place
            return dsv4::fail(status, "the device cannot hold the single read's %d CTAs at once (sized for %d SMs): "
                              "set DSV4_SM_COUNT to the SMs this process may use (MPS, green contexts)",
                              args.groups * args.chunks, dsv4::sm_count());
        }
        return DSV4_OK;
    }
    DSV4_CHECK_LAUNCH(status);
    *launched = true;
    return DSV4_OK;
}

// ---- single read in clusters (hc_head) ---------------------------------------------------------------------------

// hc_head with X read once, each token's whole computation inside one cluster of 8 CTAs: CTA r of a cluster owns dims
// [r dim / 8, (r + 1) dim / 8) of the 4 copies, and the cluster walks the 4-token windows q, q + clusters, ... in a
// software pipeline. Iteration j loads window j + kCwLead, forms window j's mix sums over the CTA's dims, forms y of
// window j - kCwMixSkew and the outputs of window j - kCwMixSkew - kCwNormSkew (RMSNorm). The CTAs' parts (per token
// its 4 mix sums and sum of X^2, later its sum of y^2) go to every CTA of the cluster as st.async pushes counted on the
// receiver's mbarriers (dsv4::push_u32), and every CTA adds the 8 parts in rank order, so all of them form the same
// pre weights and RMSNorm scale with no owner and no global memory between them. Clusters never wait on one another:
// the grid needs no co-residency, and nothing is reset before the launch.
// The mix runs on the tensor cores with rows (token, copy) of a window as the MMA's 16 A rows and columns (copy j, fn
// row c) as its 16 B columns (two n8 tiles), fn as 3 bf16 terms (24 significant bits, B fragments in registers for the
// whole launch): only the blocks j = copy are kept (a quarter of the product), and the sums of X^2 come from X times
// its own transpose, as in resident_head_kernel. Mix warp w takes k16 steps 4w .. 4w + 3 of the CTA's dims (dim / 512
// warps: 14 at V4-Pro); warp 15 forms the pre weights and warp 14 the RMSNorm scales while they run, and each adds and
// pushes the CTA's parts (mix sums after the mix, sums of y^2 of the previous y phase).
// On the H100 (15 clusters resident, 120 SMs), hc_head in us at 256 / 512 / 1024 / 2048 / 4096 tokens, same runs,
// against the two kernels below 1024 tokens and resident_head_kernel from 1024: V4-Pro 18.3-18.7 / 27.2 / 42.0-43.5 /
// 78.6 / 134.5-140.0 against 18.9-19.0 / 30.6-30.9 / 46.5-47.0 / 81.0 / 150.1-151.5; V4-Flash 15.5 / 23.2 / 33.2-33.4 /
// 61.9 / 107.3-108.4 against 12.8 / 21.4-21.5 / 29.1-29.3 / 48.4-48.7 / 86.0-86.3. %globaltimer stamps (V4-Pro x
// 4096): an iteration takes ~2.2 us, ~1.1 of it from the top barrier to the mix sums (the window's copies issued, the
// MMAs) and ~0.8 the y and output phases; the loads alone (every other phase skipped, timing only) take 78.8 us, 3.0
// TB/s. So the iteration is a fixed ~2 us chain, which V4-Pro's 28 KB windows carry and V4-Flash's 16 KB do not:
// from kCwMinDim only. Measured and not kept (V4-Pro x 1024 / 4096, us): the parts' and y^2 sums and their pushes on
// warp 0, which also mixes and forms y, 52.6 / 176.9 (V4-Flash 39.8 / 132.4); 3 windows loaded ahead 42.2 / 135.5;
// the L2::256B hint on the copies 42.5 / 136.4; the A fragments loaded before the copies are issued (128 registers,
// the copies' offsets packed into one int each, the norm weights in shared memory) 43.0-43.5 / 140.0-141.9; the
// copies as 16 bulk copies a window (cp.async.bulk, one thread, rows padded instead of swizzled) 46.3 / 160.0.
// Ablations of that version (timing only), us at 1024 / 4096: no y and outputs 40.8 / 132.4, no MMAs 37.2 / 120.4, no
// waits for the pushes 41.1 / 131.4: no one phase is the chain.
// Also measured at c63a5ab and not kept (V4-Pro, us, against the same runs' 41.7-42.2 / 134.0-137.0 at 1024 / 4096
// tokens): a mix skew of 1 (taken since, with fewer instructions: below), 41.0-41.6 / 134.4-137.3 (256 tokens 17.8
// against 18.3: the drain's iteration, no gain at 4096); a norm skew of 1, 43.4-43.5 / 143.6-143.9; both, 42.9 /
// 136.9-141.3; a mix skew of 1 with 3 windows loaded ahead, 42.1-42.2 / 135.3-138.4; the copies issued after the mix
// phase instead of before, 44.2 / 142.1-146.4; the first windows' copies issued before fn's fragments are loaded (a mix
// skew of 1), 43.7-43.8 / 138.2-140.1.
// Also measured at 9b15142 and not kept (V4-Pro, us at 256 / 1024 / 4096 tokens, against the same runs' 18.3-18.4 /
// 41.8-42.1 / 134.1-137.9; all parity-correct): windows of 8 tokens (two m16 tiles sharing fn's fragments; 3 X slots:
// one window loaded ahead, a mix skew of 1), 22.2 / 46.2-46.3 / 144.1-144.7: half the iterations, each about twice as
// long (~3.8 us), so an iteration's time follows its bytes more than a fixed chain; the mix's MMAs as two independent
// accumulator chains by step parity (the copies' offsets packed into one int each to fit 128 registers), 19.2 /
// 43.8-44.0 / 141.6-144.1, and with a mix skew of 1 18.6 / 42.5-42.9 / 139.8-140.4; three chains, one per fn term (36
// bytes spilled), 19.1 / 46.8-47.4 / 152.7-154.0.
// Issue-bound (ncu, V4-Pro x 1024 at a25ee0d: 40% of issue slots busy, 16.9 M warp instructions, ~6.4 K a CTA an
// iteration, of which the X copies' address arithmetic 23% and the y phase 27%; launch and prologue with no iteration
// 3.9 us): fewer instructions shorten the iteration. The bf16 unpack by a shift and a mask (dsv4::unpack_bf16x8), the
// copies' addresses from per-window bases, and a mix skew of 1 (one drain iteration fewer; alone it gained 0.3-0.8 us
// at 1024 tokens): V4-Pro us at 256 / 1024 / 2048 / 4096 tokens, same run, 18.43 / 41.90 / 73.91 / 135.17 -> 17.00 /
// 37.43 / 65.26 / 119.90 (the unpack alone 18.1-18.2 / 40.6-40.9 / - / 128.5-129.9, the copies alone 17.9-18.0 /
// 39.6-39.9 / - / 127.0-127.2); the outputs without the weights' select, 119.02 at 4096 (bench: 37.68 / 120.78 at
// 1024 / 4096).
constexpr int kCwRanks = 8;
constexpr int kCwThreads = 512;
constexpr int kCwTokens = 4;                          // tokens a window: with the 4 copies, an m16 tile's 16 rows
constexpr int kCwWarpSteps = 4;                       // k16 steps of a mix warp
constexpr int kCwMaxMixWarps = 14;                    // dim <= 14 * 512 = 7168
constexpr int kCwMaxVecs = kCwMaxMixWarps * kCwWarpSteps * 2;  // 16-byte vectors of a copy over a CTA's dims: 112
constexpr int kCwNormWarp = 14, kCwPreWarp = 15;
constexpr int kCwLead = 2;      // windows loaded ahead of the mix
constexpr int kCwMixSkew = 1;   // iterations from a window's mix to its y (its parts are pushed in the mix's iteration)
constexpr int kCwNormSkew = 2;  // iterations from a window's y to its outputs (its y^2 parts pushed at the next one)
constexpr int kCwXSlots = kCwLead + kCwMixSkew + 1;  // X of a window lives from its load to its y
constexpr int kCwYSlots = kCwNormSkew + 1;           // y of a window lives from its y phase to its outputs
// A CTA pushes window j's parts in iteration j once every CTA is past iteration j - kCwMixSkew's pre weights, which
// needed everyone's window j - kCwMixSkew parts: so each receiver has consumed its slot's window j - 2 kCwMixSkew
// (likewise for the y^2 parts).
constexpr int kCwPartSlots = 2 * kCwMixSkew + 1;
constexpr int kCwSqSlots = 2 * kCwNormSkew + 1;
constexpr int kCwValues = kCwTokens * (kHeadMix + 1);  // a CTA's parts of a window: token t's at 5t .. 5t + 4
constexpr int64_t kCwMinTokens = 256;  // (measured from 256: below, the two kernels keep the small batches)
constexpr int64_t kCwMinDim = 6144;  // windows of at least 24 KB a CTA (see above)
static_assert(kCwMaxMixWarps <= kCwNormWarp, "the scale and pre warps do not mix");

struct ClusterHeadArgs {
    FinalizeArgs fin;  // outputs, x and the weights' constants (fin.partial unused)
    const float* fn;   // [4, 4 * dim] fp32
    int windows;       // ceil(n_tokens / kCwTokens)
    int clusters;      // gridDim.x / kCwRanks
};

struct ClusterHeadSmem {
    Vec16 x[kCwXSlots][kCwTokens][kHc][kCwMaxVecs];  // bf16 X of a window over the CTA's dims, vector v of (t, i) at
                                                     // v ^ cw_swizzle(t, i)
    Vec16 y[kCwYSlots][kCwMaxVecs][kCwTokens];       // bf16 y (unnormalized) of a window, [vector][token]
    float red[kCwMaxMixWarps][kCwTokens][kHc][kHeadMix + 1];  // each mix warp's sums [token][copy][c], c = 4: sum X^2
    float ysq[kCwMaxMixWarps][kCwTokens];                      // each y warp's sums of y^2
    float parts[kCwPartSlots][kCwRanks][kCwValues];            // the ranks' parts of a window, pushed
    float sq_parts[kCwSqSlots][kCwRanks][kCwTokens];           // the ranks' sums of y^2 of a window, pushed
    float4 pre[kCwTokens];                                     // pre weights of window j - kCwMixSkew
    float inv_rms[kCwTokens];                                  // RMSNorm scales of window j - kCwMixSkew - kCwNormSkew
    unsigned long long parts_bar[kCwPartSlots];
    unsigned long long sq_bar[kCwSqSlots];
};

// Row (t, i) of a window's X keeps vector v at v ^ cw_swizzle(t, i): the 8 rows of each ldmatrix matrix (rows 4t + i
// < 8, or >= 8) and the 4 tokens of a copy that 8 lanes of the y phase read (vectors 2p, 2p + 1) fall in 8 different
// 16-byte bank groups (a row is a multiple of 128 bytes).
__device__ __forceinline__ int cw_swizzle(int t, int i) { return (i & 1) | ((t ^ (i & 2)) << 1); }

__global__ void __cluster_dims__(kCwRanks, 1, 1) __launch_bounds__(kCwThreads, 1)
    cluster_head_kernel(const ClusterHeadArgs args) {
    extern __shared__ __align__(16) unsigned char cw_smem_raw[];
    ClusterHeadSmem& s = *reinterpret_cast<ClusterHeadSmem*>(cw_smem_raw);
    const FinalizeArgs& fin = args.fin;
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    uint32_t rank;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    const int q = blockIdx.x / kCwRanks;
    const int n_local = (args.windows - 1 - q) / args.clusters + 1;  // q < windows (launch_cluster_head)
    const int vecs = static_cast<int>(fin.vecs), rank_vecs = vecs / kCwRanks, mix_warps = rank_vecs / 8;
    const int rank_vec = static_cast<int>(rank) * rank_vecs;  // the CTA's first vector of a copy
    const bool norm = fin.norm_weight != nullptr;
    const int iterations = n_local + kCwMixSkew + (norm ? kCwNormSkew : 0);

    if (tid < kCwPartSlots) dsv4::init_push_barrier(&s.parts_bar[tid]);
    if (tid < kCwSqSlots) dsv4::init_push_barrier(&s.sq_bar[tid]);
    dsv4::await_previous_kernel();

    // Mix warp w's B fragments (lane (g, q)): for n tile nt, column 8 nt + g = (copy 2 nt + g / 4, fn row g % 4),
    // k 2q, 2q + 1 and 2q + 8, 2q + 9 of each step, split into 3 bf16 terms.
    const int mma_g = lane / 4, mma_q = lane % 4;
    uint32_t fn_frag[kCwWarpSteps][2][3][2];  // [step][n tile][term][k half]
#pragma unroll
    for (int st = 0; st < kCwWarpSteps; ++st)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float f[2] = {0.0f, 0.0f};
                if (warp < mix_warps) {
                    const int copy = 2 * nt + mma_g / 4, row = mma_g % 4;
                    const float* src = args.fn + (int64_t(row) * kHc + copy) * (8 * int64_t(vecs)) + 8 * rank_vec +
                                       16 * (kCwWarpSteps * warp + st) + 8 * half + 2 * mma_q;
                    f[0] = __ldg(src), f[1] = __ldg(src + 1);
                }
                uint32_t words[3];
                fn_terms(f, words);
#pragma unroll
                for (int tm = 0; tm < 3; ++tm) fn_frag[st][nt][tm][half] = words[tm];
            }

    // This thread's X copies of a window: vectors e = tid + 512 u of [token][copy][rank_vecs], the same each window.
    constexpr int kCopies = (kCwTokens * kHc * kCwMaxVecs + kCwThreads - 1) / kCwThreads;  // 4
    // Token t's copies read X from x0 (token0's row) + copy_src and write slot + copy_dst (bytes of a shared address):
    // per window only the two bases change, and a copy checks its token against the window's count of valid tokens
    // (the 64-bit address and bound formed per copy before took ~28 instructions a copy, ncu's SASS).
    int copy_src[kCopies], copy_token[kCopies];
    uint32_t copy_dst[kCopies];
#pragma unroll
    for (int u = 0; u < kCopies; ++u) {
        const int e = tid + u * kCwThreads, t = e / (kHc * rank_vecs), i = e / rank_vecs % kHc, v = e % rank_vecs;
        copy_token[u] = t < kCwTokens ? t : kCwTokens;  // kCwTokens: no copy
        copy_src[u] = (t * kHc + i) * vecs + rank_vec + v;
        copy_dst[u] = ((t * kHc + i) * kCwMaxVecs + (v ^ cw_swizzle(t, i))) * sizeof(Vec16);
    }
    static_assert(kCwTokens * kHc * (kCwMinDim / (kCwRanks * 8)) >= (kCopies - 1) * kCwThreads,
                  "every pass but the last has a copy for each thread");
    const uint32_t x_slots = dsv4::shared_address(&s.x[0][0][0][0]);
    auto load_window = [&](int m) {
        if (m < n_local) {
            const int64_t token0 = int64_t(q + m * args.clusters) * kCwTokens;
            const int64_t left = fin.n_tokens - token0;
            const int valid_tokens = left < kCwTokens ? static_cast<int>(left) : kCwTokens;
            const uint32_t slot = x_slots + (m % kCwXSlots) * sizeof(s.x[0]);
            const Vec16* x0 = fin.x + token0 * kHc * vecs;  // a row in bounds: token0 < n_tokens
#pragma unroll
            for (int u = 0; u < kCopies; ++u) {
                if (u == kCopies - 1 && copy_token[u] == kCwTokens) continue;  // only the last pass has spare threads
                const bool valid = copy_token[u] < valid_tokens;
                cp_async16(slot + copy_dst[u], x0 + (valid ? copy_src[u] : 0), valid);
            }
        }
        cp_async_commit();  // one group an iteration, empty or not
    };

    // y phase thread (vector y_vec, token y_t) of the CTA's rank_vecs x 4; its norm weights stay in registers.
    const int y_t = tid % kCwTokens, y_vec = tid / kCwTokens;
    const bool y_thread = y_vec < rank_vecs;
    float4 weights[2] = {};
    if (norm && y_thread) weights[0] = __ldg(fin.norm_weight + 2 * (rank_vec + y_vec)),
                          weights[1] = __ldg(fin.norm_weight + 2 * (rank_vec + y_vec) + 1);
    const float hc_scale = __ldg(fin.hc_scale);
    const float own_base = __ldg(fin.hc_base + lane % kHc);

    auto token_of = [&](int m, int t) { return int64_t(q + m * args.clusters) * kCwTokens + t; };  // of window m

    asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");  // barriers ready
#pragma unroll 1
    for (int m = 0; m < kCwLead; ++m) load_window(m);
#pragma unroll 1
    for (int j = 0; j < iterations; ++j) {
        cp_async_wait<kCwLead - 1>();  // window j's copies (this thread's)
        __syncthreads();               // ... everyone's; the previous iteration's phases are done
        load_window(j + kCwLead);
        const int jy = j - kCwMixSkew, jo = jy - kCwNormSkew;

        if (warp < mix_warps) {
            if (j < n_local) {  // window j's mix over the warp's 4 k16 steps
                const Vec16* slot = &s.x[j % kCwXSlots][0][0][0];
                float mix_acc[2][4] = {}, sq_acc[2][4] = {};
#pragma unroll
                for (int st = 0; st < kCwWarpSteps; ++st) {
                    // ldmatrix.x4: matrix l / 8 = (rows +8 if odd, k +8 if >= 2), lane l gives row l % 8's address.
                    const int row = (lane / 8 % 2) * 8 + lane % 8, kv = 2 * (kCwWarpSteps * warp + st) + lane / 16;
                    const int t = row / kHc, i = row % kHc;
                    uint32_t a[4];
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                                 : "r"(dsv4::shared_address(slot + row * kCwMaxVecs + (kv ^ cw_swizzle(t, i)))));
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                        for (int tm = 0; tm < 3; ++tm)
                            mma_bf16(mix_acc[nt], a, fn_frag[st][nt][tm][0], fn_frag[st][nt][tm][1]);
                    mma_bf16(sq_acc[0], a, a[0], a[2]);
                    mma_bf16(sq_acc[1], a, a[1], a[3]);
                }
                // Lane (g, q) holds rows g (token g / 4) and g + 8 (token 2 + g / 4) of copy i = g % 4; its columns
                // 2q, 2q + 1 of n tile i / 2 are copy i's when q / 2 = i % 2 (fn rows 2 (q % 2), + 1).
                const int i = mma_g % kHc, t0 = mma_g / kHc;
                if (mma_q / 2 == i % 2) {
                    const bool high = i >= 2;
                    const int c = 2 * (mma_q % 2);
                    s.red[warp][t0][i][c] = high ? mix_acc[1][0] : mix_acc[0][0];
                    s.red[warp][t0][i][c + 1] = high ? mix_acc[1][1] : mix_acc[0][1];
                    s.red[warp][t0 + 2][i][c] = high ? mix_acc[1][2] : mix_acc[0][2];
                    s.red[warp][t0 + 2][i][c + 1] = high ? mix_acc[1][3] : mix_acc[0][3];
                }
                if (mma_q == mma_g / 2) {  // the diagonals of X X^T: (g, g) in n tile 0, (g + 8, g + 8) in n tile 1
                    const bool odd = mma_g % 2;
                    s.red[warp][t0][i][kHeadMix] = odd ? sq_acc[0][1] : sq_acc[0][0];
                    s.red[warp][t0 + 2][i][kHeadMix] = odd ? sq_acc[1][3] : sq_acc[1][2];
                }
            }
        } else if (warp == kCwPreWarp) {
            if (jy >= 0 && jy < n_local) {  // window jy's pre weights: lane 5t + c sums value c of token t
                const int slot = jy % kCwPartSlots;
                if (lane == 0)
                    dsv4::arrive_pushed(dsv4::shared_address(&s.parts_bar[slot]), kCwRanks * kCwValues * sizeof(float));
                dsv4::wait_pushed(&s.parts_bar[slot], (jy / kCwPartSlots) % 2);
                float sum = 0.0f;
                if (lane < kCwValues)
#pragma unroll
                    for (int r = 0; r < kCwRanks; ++r) sum += s.parts[slot][r][lane];
                const int t = lane / (kHeadMix + 1), c = lane % (kHeadMix + 1);
                const float sq = __shfl_sync(0xFFFFFFFFu, sum, min(t, kCwTokens - 1) * (kHeadMix + 1) + kHeadMix);
                const float base = __shfl_sync(0xFFFFFFFFu, own_base, c % kHc);
                if (lane < kCwValues && c < kHeadMix) {
                    const float mix_rms = rms_scale(sq, fin.k, fin.mix_eps);
                    reinterpret_cast<float*>(s.pre)[t * kHc + c] = __fadd_rn(
                        sigmoid(__fadd_rn(__fmul_rn(__fmul_rn(sum, mix_rms), hc_scale), base)), fin.hc_eps);
                }
            }
        } else if (warp == kCwNormWarp) {
            // The sums of y^2 of window jy - 1 (its y phase was the previous iteration) to every CTA: lane t's of
            // token t over the y warps, then to rank lane / 4.
            if (norm && jy >= 1 && jy - 1 < n_local) {
                const int t = lane % kCwTokens;
                float sum = 0.0f;
#pragma unroll
                for (int w = 0; w < kCwMaxMixWarps; ++w) sum += w < mix_warps ? s.ysq[w][t] : 0.0f;
                const int slot = (jy - 1) % kCwSqSlots;
                const uint32_t r = lane / kCwTokens;
                dsv4::push_u32(dsv4::peer_address(&s.sq_parts[slot][rank][t], r), __float_as_uint(sum),
                               dsv4::peer_address(&s.sq_bar[slot], r));
            }
            if (norm && jo >= 0 && jo < n_local) {  // window jo's RMSNorm scales: lane t sums token t's
                const int slot = jo % kCwSqSlots;
                if (lane == 0)
                    dsv4::arrive_pushed(dsv4::shared_address(&s.sq_bar[slot]), kCwRanks * kCwTokens * sizeof(float));
                dsv4::wait_pushed(&s.sq_bar[slot], (jo / kCwSqSlots) % 2);
                if (lane < kCwTokens) {
                    float sum = 0.0f;
#pragma unroll
                    for (int r = 0; r < kCwRanks; ++r) sum += s.sq_parts[slot][r][lane];
                    s.inv_rms[lane] = rms_scale(sum, fin.dim, fin.norm_eps);
                }
            }
        }
        __syncthreads();  // the mix sums, pre and the scales are in

        // Window j's parts to every CTA, by the pre warp (no y phase): lane 5t + c adds value c of token t over the
        // mix warps and copies.
        if (warp == kCwPreWarp && j < n_local && lane < kCwValues) {
            const int t = lane / (kHeadMix + 1), c = lane % (kHeadMix + 1);
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < kCwMaxMixWarps; ++w)
#pragma unroll
                for (int i = 0; i < kHc; ++i) sum += w < mix_warps ? s.red[w][t][i][c] : 0.0f;
            const int slot = j % kCwPartSlots;
#pragma unroll
            for (uint32_t r = 0; r < kCwRanks; ++r)
                dsv4::push_u32(dsv4::peer_address(&s.parts[slot][rank][lane], r), __float_as_uint(sum),
                               dsv4::peer_address(&s.parts_bar[slot], r));
        }

        // y of window jy from the token's pre weights; unnormalized into shared memory for the RMSNorm, or out.
        if (jy >= 0 && jy < n_local && y_thread) {
            const float4 pre4 = s.pre[y_t];
            const float pre[kHc] = {pre4.x, pre4.y, pre4.z, pre4.w};
            const Vec16* row = &s.x[jy % kCwXSlots][y_t][0][0];
            Vec16 xv[kHc];
#pragma unroll
            for (int i = 0; i < kHc; ++i) xv[i] = row[i * kCwMaxVecs + (y_vec ^ cw_swizzle(y_t, i))];
            float ysq = 0.0f;
            const Vec16 y = weighted_sum(xv, pre, ysq);
            const int64_t token = token_of(jy, y_t);
            if (norm) {
                s.y[jy % kCwYSlots][y_vec][y_t] = y;
#pragma unroll
                for (int offset = kCwTokens; offset < dsv4::kWarpSize; offset <<= 1)
                    ysq += __shfl_xor_sync(0xFFFFFFFFu, ysq, offset);
                if (lane < kCwTokens) s.ysq[warp][lane] = ysq;
            } else if (token < fin.n_tokens) {
                fin.y[token * vecs + rank_vec + y_vec] = y;
            }
        }
        // Outputs of window jo: the RMSNorm with the token's scale (hc_head's store_outputs has no shuffles, so the
        // threads of tokens past n_tokens skip it, and the others' weights need no select).
        if (norm && jo >= 0 && jo < n_local && y_thread) {
            const int64_t token = token_of(jo, y_t);
            if (token < fin.n_tokens)
                store_outputs<false>(fin, token, rank_vec + y_vec, true, s.y[jo % kCwYSlots][y_vec][y_t], true,
                                     s.inv_rms[y_t], weights);
        }
    }
    cp_async_wait<0>();
    // No CTA leaves while another may still push into it (its last waits cover every push it receives; this covers
    // the stores in flight).
    asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}

// Clusters of cluster_head_kernel the device holds at once (0 if it holds none or a query fails), capped by the SMs
// this process may use (dsv4::sm_count); queried once.
int cluster_head_capacity() {
    static const int capacity = [] {
        constexpr int smem = static_cast<int>(sizeof(ClusterHeadSmem));
        int clusters = 0;
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(kCwRanks);
        config.blockDim = dim3(kCwThreads);
        config.dynamicSmemBytes = smem;
        if (cudaFuncSetAttribute(cluster_head_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
                cudaSuccess ||
            cudaOccupancyMaxActiveClusters(&clusters, cluster_head_kernel, &config) != cudaSuccess) {
            cudaGetLastError();  // a query failure is not sticky
            return 0;
        }
        return clusters;
    }();
    return std::min(capacity, dsv4::sm_count() / kCwRanks);
}

bool use_cluster_head(int64_t n_tokens, int64_t dim) {
    return n_tokens >= kCwMinTokens && dim >= kCwMinDim && dim % (kCwRanks * 64) == 0 &&
           dim / (kCwRanks * 64) <= kCwMaxMixWarps && cluster_head_capacity() > 0;
}

// hc_head by cluster_head_kernel (use_cluster_head); p's pointers and sizes are checked by the caller but for fn.
int launch_cluster_head(const dsv4_mhc_head_params& p, cudaStream_t stream) {
    DSV4_CHECK_FIELD_PTR(p, fn, 16);
    ClusterHeadArgs args{};
    args.fin = head_args(p);
    args.fn = p.fn;
    args.windows = static_cast<int>((p.n_tokens + kCwTokens - 1) / kCwTokens);
    args.clusters = std::min(cluster_head_capacity(), args.windows);
    DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, cluster_head_kernel,
                                          static_cast<unsigned>(args.clusters * kCwRanks), kCwThreads,
                                          sizeof(ClusterHeadSmem), stream, args));
    return DSV4_OK;
}

// ---- hc_post -----------------------------------------------------------------------------------------------------

constexpr int kPostThreads = 128;

// Copy j of the new stream at 8 elements: bf16(post_j f + sum_i comb_ij X_i) as an fp32 fma chain in i order.
__device__ __forceinline__ Vec16 post_combine(const float (&xs)[kHc][8], const float (&fs)[8], float pj, float cj0,
                                              float cj1, float cj2, float cj3) {
    float o[8];
#pragma unroll
    for (int e = 0; e < 8; ++e)
        o[e] = fmaf(pj, fs[e], fmaf(cj3, xs[3][e], fmaf(cj2, xs[2][e], fmaf(cj1, xs[1][e], __fmul_rn(cj0, xs[0][e])))));
    return dsv4::pack_bf16x8(o);
}

// grid (n_tokens, ceil(vecs / kPostThreads)): thread = one 16-byte column vector of one token, all 4 copies.
// out may be x itself: each thread reads its 4 vectors before writing the same 4.
__global__ void __launch_bounds__(kPostThreads) hc_post_kernel(Vec16* out,               // [n, 4, vecs] bf16
                                                               const Vec16* x,           // [n, 4, vecs] bf16
                                                               const Vec16* __restrict__ f,     // [n, vecs] bf16
                                                               const float4* __restrict__ post, // [n] (4 fp32)
                                                               const float4* __restrict__ comb, // [n, 4] rows i
                                                               int64_t vecs) {
    dsv4::await_previous_kernel();
    const int64_t t = blockIdx.x;
    const int64_t idx = int64_t(blockIdx.y) * kPostThreads + threadIdx.x;
    if (idx >= vecs) return;
    const Vec16* xt = x + t * kHc * vecs + idx;
    Vec16 xin[kHc];
#pragma unroll
    for (int i = 0; i < kHc; ++i) xin[i] = xt[i * vecs];
    const Vec16 fin = __ldg(f + t * vecs + idx);
    const float4 p = __ldg(post + t);
    float4 c[kHc];
#pragma unroll
    for (int i = 0; i < kHc; ++i) c[i] = __ldg(comb + t * kHc + i);

    float xs[kHc][8], fs[8];
#pragma unroll
    for (int i = 0; i < kHc; ++i) dsv4::unpack_bf16x8(xin[i], xs[i]);
    dsv4::unpack_bf16x8(fin, fs);
    Vec16* ot = out + t * kHc * vecs + idx;
#pragma unroll
    for (int j = 0; j < kHc; ++j)
        ot[j * vecs] = post_combine(xs, fs, component(p, j), component(c[0], j), component(c[1], j), component(c[2], j),
                                    component(c[3], j));
}

// ---- hc_post fused with the next mix product ------------------------------------------------------------------------
//
// Block (c, y): dims 128c .. 128c + 127 of all 4 copies for the 16-token m tiles of token group y; its fn slice
// (fp32 split into tf32 hi and lo, 2 x 48 KB for 24 rows, loaded by the consumer warps while the producers' first
// slots are in flight) sits in shared memory for the whole block. The block's
// warps come in kPostMixPairs pairs, a producer and a consumer sharing a ring of kPostMixRing slots; pair p takes
// the group's tiles p, p + kPostMixPairs, ... and walks their 4 K steps of 32 dims each as one sequence, two steps
// per slot. Per slot the producer's cp.async brings X's 4 copies and f of its 2 x 8 rows (the 4 lanes of a row: 128
// contiguous bytes) into the ring kPostMixRing - 2 slots ahead (a lane reads back only what it copied); the producer
// forms the 4 new copies (exactly hc_post_kernel's arithmetic), stores them, and writes them back over the old copies
// in the slot; the consumer lane with the same index reads them as the tensor cores' A fragments of two K steps of
// the mix (kernel 1's per-step fold, its B fragments from the split slice). full / empty mbarriers per slot hand the
// slot over. A tile's partials over the block's 512 K elements are complete in the consumer's registers after its 4
// steps: partial[c, t, :], dim / 128 splits.
// One warp doing both roles needed ~255 registers for its ILP, so a block of 8 such warps filled an SM and stayed
// latency-bound (ncu: DRAM 61%, issue 58% busy): 258 us at V4-Pro x 4096, against 213-215 us now. With one K step
// (64 bytes of a row) per slot it took 230 us; there, a consumer skipping its MMAs made it slower (260 us), as did a
// producer skipping its arithmetic (265 us): the order of DRAM requests, not either role's work, sets its pace, and
// a row's 128-byte line read and written in halves one step apart was the cost. Pairs x one-step slots measured at
// V4-Pro x 4096 (fn split per step): 8 x 3 272 us, 8 x 4 264, 6 x 5 262, 4 x 6 242, 4 x 7 242, 4 x 8 248, 3 x 10 315,
// 2 x 16 370; 4 x 6 with the split fn 230 us (V4-Flash 143, against 140 without it: its blocks take half as many
// tiles); the producer issuing the next load before its post arithmetic, 230 us; the weights as one float4 per token
// and term, 244 us; the consumer storing the new stream, 255 us; 5 x 4 with the split fn, 304 us; separate
// accumulators for the lo and hi MMA chains (4 dependent MMAs instead of 8), 230 us.
// Measured alternatives (V4-Pro x 4096, one warp doing both roles): 256-dim chunks with 6 warps, 290 us; registers
// instead of the cp.async ring, 340 us (long-scoreboard stalls); fn split once per block with a 3-deep ring, 262 us
// against 259; 9 / 10 / 12 warps at 168 registers, 402 / 373 / 343 us; a persistent grid balancing (chunk, tile)
// units over all SMs, 289 us (fn reloads, ring restarts); 132 blocks each taking an equal run of the chunk-major
// (chunk, tile) units (two fn slices, 3-deep ring), 293 us (317 with 100-byte partial rows per token, split-minor):
// probably DRAM locality, as the (chunk, group) grid has every chunk of a token in flight at once.

constexpr int kPostMixPairs = 4;                            // producer / consumer warp pairs per block
constexpr int kPostMixRing = 3;                             // ring slots per pair
constexpr int kSlotSteps = 2;                               // K steps per slot: a row's 4 lanes move 128 bytes
constexpr int kPostMixWarps = 2 * kPostMixPairs;
constexpr int kPostMixThreads = kPostMixWarps * dsv4::kWarpSize;
constexpr int kPostMixSteps = kPostMixDims / kStepK;        // 4 steps of 32 dims per m tile
constexpr int kPostMixTile = 16;                            // tokens per m tile
constexpr int kStepVecs = 2 * (kHc + 1);                    // per lane per step: rows g, g + 8 x (4 copies, f)
constexpr int kSlotVecs = kSlotSteps * kStepVecs;
constexpr int kSlotsPerTile = kPostMixSteps / kSlotSteps;
constexpr int kFnSmemPitch = kHc * kPostMixDims + 4;        // floats per fn row (+16 B: conflict-free B fragments)
constexpr int kWeightsPerTile = kPostMixTile * kHc * 5;     // post_j, comb_0j .. comb_3j per token and copy j

struct PostMixArgs {
    Vec16* out;             // [n_tokens, 4, vecs] bf16: the new stream (may be x)
    float* partial;         // [dim / 128, n_tokens, partial_row(num_mix)] fp32
    const Vec16* x;         // [n_tokens, 4, vecs] bf16
    const Vec16* f;         // [n_tokens, vecs] bf16
    const float* post;      // [n_tokens, 4]
    const float* comb;      // [n_tokens, 4, 4]
    const float4* fn;       // [num_mix, 4 * dim / 4] fp32
    int64_t n_tokens;
    int64_t vecs;           // dim / 8
    int64_t tiles;          // 16-token m tiles
    int64_t tiles_per_group;
    int num_mix;            // 24 or 4
};

// fn slice split into tf32 hi and lo, then each pair's ring.
size_t post_mix_smem_bytes(int n_tiles) {
    return 2 * sizeof(float) * n_tiles * 8 * kFnSmemPitch +
           sizeof(Vec16) * kPostMixPairs * kPostMixRing * kSlotVecs * dsv4::kWarpSize;
}

// mbarriers in shared memory: each phase completes when `count` threads have arrived (release / acquire at CTA scope).
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(dsv4::shared_address(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
    asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared::cta.b64 state, [%0];\n}"
                 ::"r"(dsv4::shared_address(bar))
                 : "memory");
}
// Waits for the completion of the phase with this parity (use u of a barrier completed once per use: parity u & 1).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
            : "=r"(done)
            : "r"(dsv4::shared_address(bar)), "r"(parity)
            : "memory");
    } while (!done);
}

// grid (dim / 128, groups): block (c, y) takes chunk c and the token tiles of group y; kPostMixThreads threads (warps
// 0 .. kPostMixPairs - 1 produce, the others consume), post_mix_smem_bytes(kNTiles) bytes of shared memory.
template <int kNTiles>
__global__ void __launch_bounds__(kPostMixThreads, 1) post_mix_kernel(const PostMixArgs args) {
    dsv4::await_previous_kernel();
    extern __shared__ uint4 smem16[];
    // fn's slice split once (split_tf32): [kNTiles * 8 rows][kFnSmemPitch / 4], copy j at elements j * kPostMixDims ..
    constexpr int kFnVecs = kNTiles * 8 * (kFnSmemPitch / 4);
    uint4* fn_hi = smem16;
    uint4* fn_lo = smem16 + kFnVecs;
    // [pair][slot][kStepVecs][lane] 16-byte vectors after the fn slice
    Vec16* rings = smem16 + 2 * kFnVecs;
    __shared__ float weights[kPostMixPairs][kPostMixTile][kHc][5];
    __shared__ uint64_t full[kPostMixPairs][kPostMixRing];   // slot holds the new copies (32 producer lanes arrive)
    __shared__ uint64_t empty[kPostMixPairs][kPostMixRing];  // slot read by the consumer (32 lanes arrive)
    const int lane = threadIdx.x % dsv4::kWarpSize, warp = threadIdx.x / dsv4::kWarpSize;
    const int pair = warp % kPostMixPairs;
    const bool producer = warp < kPostMixPairs;
    const int g = lane / 4, q = lane % 4;
    const int chunk = blockIdx.x;
    const int64_t dim4 = args.vecs * 2;  // float4s per fn row per copy
    constexpr int kRowVec4 = kPostMixDims / 4;

    const int64_t tile_begin = int64_t(blockIdx.y) * args.tiles_per_group;
    const int64_t tile_end = min(args.tiles, tile_begin + args.tiles_per_group);
    const int64_t tile_first = tile_begin + pair;
    const int64_t my_tiles = tile_first < tile_end ? (tile_end - tile_first + kPostMixPairs - 1) / kPostMixPairs : 0;
    const int64_t total_slots = my_tiles * kSlotsPerTile;
    const int64_t vec0 = int64_t(chunk) * (kPostMixDims / kBf16PerVec) + q;  // this lane's first vector in a row
    Vec16* ring = rings + pair * kPostMixRing * kSlotVecs * dsv4::kWarpSize + lane;  // lane-interleaved slots
    // Slot k: K steps kSlotSteps (k % kSlotsPerTile) + t of tile tile_of(k); vector (t, h, i) of a lane at
    // at(t, h, i): rows g and g + 8 (h), copies 0..3 then f (i).
    auto slot_of = [&](int64_t k) { return ring + (k % kPostMixRing) * kSlotVecs * dsv4::kWarpSize; };
    auto tile_of = [&](int64_t k) { return tile_first + (k / kSlotsPerTile) * kPostMixPairs; };
    auto at = [](int t, int h, int i) { return ((t * 2 + h) * (kHc + 1) + i) * dsv4::kWarpSize; };
    // The lane's vector of K step `step` (of kPostMixSteps) in a row.
    auto vec_of = [&](int step) { return vec0 + (kStepK / kBf16PerVec) * step; };

    auto issue = [&](int64_t k) {
        if (k < total_slots) {
            const int64_t tile = tile_of(k);
            Vec16* slot = slot_of(k);
#pragma unroll
            for (int t = 0; t < kSlotSteps; ++t) {
                const int64_t vec = vec_of(kSlotSteps * static_cast<int>(k % kSlotsPerTile) + t);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int64_t token = tile * kPostMixTile + h * 8 + g;
                    const bool valid = token < args.n_tokens;
#pragma unroll
                    for (int i = 0; i < kHc; ++i)
                        cp_async16(slot + at(t, h, i),
                                   valid ? args.x + (token * kHc + i) * args.vecs + vec : args.x, valid);
                    cp_async16(slot + at(t, h, kHc), valid ? args.f + token * args.vecs + vec : args.f, valid);
                }
            }
        }
        cp_async_commit();  // possibly empty: one group per slot keeps the wait count fixed
    };
    // A tile's weights, 10 per lane: lane + 32 r is entry e of weights[pair] (token e / 20, copy e / 5 % 4,
    // term e % 5).
    float next_weights[kWeightsPerTile / dsv4::kWarpSize];
    auto weight_source = [&](int64_t tile, int r) -> const float* {  // NULL: a zero weight
        const int e = lane + r * dsv4::kWarpSize;
        const int row = e / (kHc * 5), j = (e / 5) % kHc, i = e % 5;
        const int64_t t = tile * kPostMixTile + row;
        return t >= args.n_tokens || tile >= tile_end ? nullptr
               : i == 0                               ? args.post + t * kHc + j
                                                      : args.comb + (t * kHc + i - 1) * kHc + j;
    };
    auto fetch_weights = [&](int64_t tile) {
#pragma unroll
        for (int r = 0; r < kWeightsPerTile / dsv4::kWarpSize; ++r) {
            const float* src = weight_source(tile, r);
            next_weights[r] = src != nullptr ? __ldg(src) : 0.0f;
        }
    };
    if (producer) {
        // The first tile's weights straight into shared memory, in slot 0's cp.async group.
#pragma unroll
        for (int r = 0; r < kWeightsPerTile / dsv4::kWarpSize; ++r) {
            const float* src = weight_source(tile_first, r);
            cp_async4(&weights[pair][0][0][0] + lane + r * dsv4::kWarpSize, src != nullptr ? src : args.post,
                      src != nullptr);
        }
#pragma unroll
        for (int k = 0; k < kPostMixRing - 1; ++k) issue(k);
    }

    // fn's slice, by the consumers while the producers' first loads are in flight: every thread's loads at once,
    // then split into shared memory (at small batches X and fn arrive together: the slice is 48 KB, X 1 KB a token).
    constexpr int kConsumerThreads = kPostMixThreads / 2;
    constexpr int kFnVec4PerThread = kNTiles * 8 * kHc * kRowVec4 / kConsumerThreads;
    static_assert(kFnVec4PerThread * kConsumerThreads == kNTiles * 8 * kHc * kRowVec4, "whole loads per thread");
    if (!producer) {
        const int ct = threadIdx.x - kConsumerThreads;
        float4 fn_loaded[kFnVec4PerThread];
#pragma unroll
        for (int r = 0; r < kFnVec4PerThread; ++r) {
            const int i = ct + r * kConsumerThreads;
            const int row = i / (kHc * kRowVec4), j = (i / kRowVec4) % kHc, v = i % kRowVec4;
            fn_loaded[r] = row < args.num_mix ? __ldg(args.fn + row * kHc * dim4 + j * dim4 + chunk * kRowVec4 + v)
                                              : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int r = 0; r < kFnVec4PerThread; ++r) {
            const int i = ct + r * kConsumerThreads;
            const int row = i / (kHc * kRowVec4), j = (i / kRowVec4) % kHc, v = i % kRowVec4;
            uint4 hi, lo;
            split_tf32(fn_loaded[r].x, hi.x, lo.x);
            split_tf32(fn_loaded[r].y, hi.y, lo.y);
            split_tf32(fn_loaded[r].z, hi.z, lo.z);
            split_tf32(fn_loaded[r].w, hi.w, lo.w);
            fn_hi[row * (kFnSmemPitch / 4) + j * kRowVec4 + v] = hi;
            fn_lo[row * (kFnSmemPitch / 4) + j * kRowVec4 + v] = lo;
        }
        if (ct < kPostMixPairs * kPostMixRing) {
            mbarrier_init(&full[0][0] + ct, dsv4::kWarpSize);
            mbarrier_init(&empty[0][0] + ct, dsv4::kWarpSize);
        }
    }
    __syncthreads();

    if (producer) {
        for (int64_t k = 0; k < total_slots; ++k) {
            const int s = static_cast<int>(k % kSlotsPerTile);
            const int64_t tile = tile_of(k);
            if (s == 0 && k > 0) {
                __syncwarp();  // the previous tile's readers are done with weights[pair]
#pragma unroll
                for (int r = 0; r < kWeightsPerTile / dsv4::kWarpSize; ++r)
                    (&weights[pair][0][0][0])[lane + r * dsv4::kWarpSize] = next_weights[r];
                __syncwarp();
            }
            if (s == kSlotsPerTile / 2) fetch_weights(tile + kPostMixPairs);  // the next tile's, in flight meanwhile

            cp_async_wait<kPostMixRing - 2>();  // slot k's group is complete (each lane reads only its own vectors)
            if (k == 0) __syncwarp();           // every lane's cp.async of the first weights has landed
            Vec16* slot = slot_of(k);
#pragma unroll
            for (int t = 0; t < kSlotSteps; ++t) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int64_t token = tile * kPostMixTile + h * 8 + g;
                    float xs[kHc][8], fs[8];
#pragma unroll
                    for (int i = 0; i < kHc; ++i) dsv4::unpack_bf16x8(slot[at(t, h, i)], xs[i]);
                    dsv4::unpack_bf16x8(slot[at(t, h, kHc)], fs);
#pragma unroll
                    for (int j = 0; j < kHc; ++j) {
                        const float* w = weights[pair][h * 8 + g][j];
                        const Vec16 y = post_combine(xs, fs, w[0], w[1], w[2], w[3], w[4]);
                        if (token < args.n_tokens)
                            args.out[(token * kHc + j) * args.vecs + vec_of(kSlotSteps * s + t)] = y;
                        slot[at(t, h, j)] = y;  // over copy j: read only by this lane
                    }
                }
            }
            mbarrier_arrive(&full[pair][k % kPostMixRing]);
            // Slot k + kPostMixRing - 1 goes where slot k - 1 was once the consumer has read it.
            const int64_t next = k + kPostMixRing - 1;
            if (k > 0 && next < total_slots)
                mbarrier_wait(&empty[pair][(k - 1) % kPostMixRing], ((k - 1) / kPostMixRing) & 1);
            issue(next);
        }
        cp_async_wait<0>();
        return;
    }

    float acc[1][kNTiles][4];
    float sumsq[1][2];
    for (int64_t k = 0; k < total_slots; ++k) {
        const int s = static_cast<int>(k % kSlotsPerTile);
        if (s == 0) {
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[0][nt][i] = 0.0f;
            sumsq[0][0] = sumsq[0][1] = 0.0f;
        }
        mbarrier_wait(&full[pair][k % kPostMixRing], (k / kPostMixRing) & 1);
        const Vec16* slot = slot_of(k);
        Vec16 copies[kSlotSteps][2][kHc];
#pragma unroll
        for (int t = 0; t < kSlotSteps; ++t)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int j = 0; j < kHc; ++j) copies[t][h][j] = slot[at(t, h, j)];
        mbarrier_arrive(&empty[pair][k % kPostMixRing]);
#pragma unroll
        for (int tj = 0; tj < kSlotSteps * kHc; ++tj) {
            const int t = tj / kHc, j = tj % kHc, step = kSlotSteps * s + t;
            const Vec16 x[1][2] = {{copies[t][0][j], copies[t][1][j]}};  // new copy j of rows g, g + 8 (A)
            uint4 hi[kNTiles][2], lo[kNTiles][2];                   // the fn slice's B fragments
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (int v = 0; v < 2; ++v) {
                    const int e = (nt * 8 + g) * (kFnSmemPitch / 4) + j * kRowVec4 + step * (kStepK / 4) + 2 * q + v;
                    hi[nt][v] = fn_hi[e];
                    lo[nt][v] = fn_lo[e];
                }
            mma_step_with<1, kNTiles>(acc, sumsq, x, [&](int nt, int u, uint32_t& hi0, uint32_t& hi1, uint32_t& lo0,
                                                         uint32_t& lo1) {
                hi0 = word(hi[nt][u / 2], (2 * u) % 4), hi1 = word(hi[nt][u / 2], (2 * u) % 4 + 1);
                lo0 = word(lo[nt][u / 2], (2 * u) % 4), lo1 = word(lo[nt][u / 2], (2 * u) % 4 + 1);
            });
        }

        if (s == kSlotsPerTile - 1) {
            const int64_t tile = tile_of(k);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                sumsq[0][h] += __shfl_xor_sync(0xFFFFFFFFu, sumsq[0][h], 1);
                sumsq[0][h] += __shfl_xor_sync(0xFFFFFFFFu, sumsq[0][h], 2);
                const int64_t token = tile * kPostMixTile + h * 8 + g;
                if (token >= args.n_tokens) continue;
                float* row = args.partial + (chunk * args.n_tokens + token) * partial_row(args.num_mix);
#pragma unroll
                for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        if (nt * 8 + 2 * q + e < args.num_mix) row[nt * 8 + 2 * q + e] = acc[0][nt][2 * h + e];
                if (q == 0) row[args.num_mix] = sumsq[0][h];
            }
        }
    }
}

// The mix product for small batches (n_tokens < kPostMixSmallMaxTokens): post_mix's (kPost: of the new stream it
// forms) and standalone hc_pre / hc_head's (of X itself, in place of kernel 1). The pipelined post_mix above needs
// a 2-3 us prologue (its fn slice into shared memory) and then walks each pair's slots as a chain of producer and
// consumer steps, ~9 us at 1 token. Here block (c, m) takes chunk c (the same 128 dims as above, so the same
// partial layout) of token tile m (16 or 32 tokens: launch_mix_small), and every load is issued at once: the tile's
// X (and f; cp.async into shared memory, read by several warps), its post / comb weights, and each warp's fn
// fragments straight from global memory (each fn element is used once per tile, so staging it would only add a
// round trip). Warp w takes copy j = w % 4 over K steps 2 (w / 4) and 2 (w / 4) + 1 of the chunk (with kPost it
// forms and stores the new copy j) and multiplies it by fn's copy-j rows on the tensor cores; the 8 warps' products
// are added in shared memory in warp order. post_mix at V4-Pro on the H100: 1 token 10.7 -> 5.1 us, 64 tokens 12.5 ->
// 8.9 us (now 3.6 and 7.4: 32-token tiles, lean loads); from 128 tokens the pipelined kernel is faster (14.1 against
// 16.2 us). fn is read once per tile: with its loads left out (a diagnostic, wrong results, before the lean loads)
// 64 tokens took 7.2 us and 1 token 3.5 us. Where standalone hc_pre / hc_head spend V4-Pro x 64 tokens (H100, the
// bench's timing, two runs; diagnostics with wrong results): whole 9.91-9.92 / 6.82 us; fn's loads left out of this
// kernel 9.69-9.72 / 6.61-6.63; this kernel returning right after its wait 6.82-6.83 / 4.80-4.83; the finalize
// returning right after its wait 6.71-6.78 / 4.68-4.75 (hc_pre from given partials: 4.74 -> 1.30). So each kernel's
// work past its wait costs ~3.1 us (hc_pre) or ~2.0 (hc_head), and reading fn once per 64 tokens (64-dim chunks,
// 56 KB a block instead of 80) could save at most the ~0.2 us all of fn's loads cost: not built.
constexpr int64_t kPostMixSmallMaxTokens = 96;
// Standalone hc_pre / hc_head form their partials here below this many tokens, in place of kernel 1 (which
// reads fn once per 128 tokens, not per 16). V4-Pro on the H100, us, kernel 1 -> mix_small: hc_pre 96 tokens
// 25.6 -> 15.9, 192 30.3 -> 26.0, 384 42.9 -> 43.5, 768 64.3 -> 84.4; hc_head 192 20.6 -> 16.5, 384 28.5 -> 26.1,
// 768 46.0 -> 49.4 (V4-Flash: the same side of 384), measured with 16-token tiles only.
constexpr int64_t kStandaloneSmallMaxTokens = 384;

constexpr int kSmallWarps = 8;
constexpr int kSmallThreads = kSmallWarps * dsv4::kWarpSize;
constexpr int kSmallStepsPerWarp = kPostMixSteps / 2;  // two warps per copy split the chunk's 4 K steps
constexpr int kChunkVecs = kPostMixDims / kBf16PerVec;  // 16 vectors of a row per copy
// Shared-memory row of the X tile: 4 copies then f, kChunkVecs vectors each, padded so that the 8 lanes of a
// 16-byte access phase (rows g, g + 1 of a step: vector offsets 4s + q) fall in 8 different bank groups.
constexpr int kSmallRowVecs = (kHc + 1) * kChunkVecs + 4;
constexpr int kSmallRedPitch = kMaxPartialRow + 1;

// A read-only load the compiler may not sink to its first use (an asm volatile stays ahead of the barrier after it):
// issued with the kernel's other loads, it shares their memory latency instead of adding its own.
__device__ __forceinline__ float4 load_early(const float4* ptr) {
    float4 v;
    asm volatile("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(ptr));
    return v;
}

// kMTiles m16 tiles of tokens per block (kMTiles * 16 tokens). Not kPost: out, f, post and comb are unused. kLean: the
// tile's load order (below; launch_mix_small picks it). The standalone lean instances ask ptxas for 2 blocks per SM
// (__launch_bounds__; 0 leaves the register budget to ptxas), ~107 registers instead of ~72, measured faster: hc_pre
// V4-Pro 1 token 7.9 -> 7.1 us, hc_head 64 tokens 8.4 -> 7.8 us.
template <int kNTiles, int kMTiles, bool kPost, bool kLean>
__global__ void __launch_bounds__(kSmallThreads, !kPost && kLean ? 2 : 0) mix_small_kernel(const PostMixArgs args) {
    constexpr int kTileTokens = kMTiles * kPostMixTile;
    {
        // Warm L2 with the block's inputs while the previous kernel runs: each (token, input) chunk row is 256
        // contiguous bytes, each (fn row, copy) chunk 512.
        constexpr int kInputs = kPost ? kHc + 1 : kHc;
        const int64_t first_token = int64_t(blockIdx.y) * kTileTokens, col = int64_t(blockIdx.x) * kChunkVecs;
        for (int e = threadIdx.x; e < kTileTokens * kInputs; e += kSmallThreads) {
            const int64_t token = first_token + e / kInputs;
            const int i = e % kInputs;
            const Vec16* row = i < kHc ? args.x + (token * kHc + i) * args.vecs : args.f + token * args.vecs;
            if (token < args.n_tokens) dsv4::prefetch_l2_bulk(row + col, kChunkVecs * sizeof(Vec16));
        }
        for (int e = threadIdx.x; e < args.num_mix * kHc; e += kSmallThreads)
            dsv4::prefetch_l2_bulk(args.fn + (e / kHc) * args.vecs * 2 * kHc + ((e % kHc) * args.vecs + col) * 2,
                                   kChunkVecs * 2 * sizeof(float4));
    }
    dsv4::await_previous_kernel();
    constexpr int kTileXBytes = kTileTokens * kSmallRowVecs * sizeof(Vec16);
    constexpr int kRedBytes = kSmallWarps * kTileTokens * kSmallRedPitch * sizeof(float);
    // The X tile ([row][copy 0..3, f][16 vectors] + pad), then, once the products are formed, each warp's products
    // and sums of squares in the same bytes: [kSmallWarps][kTileTokens][kSmallRedPitch] floats.
    __shared__ __align__(16) unsigned char tile_bytes[kTileXBytes > kRedBytes ? kTileXBytes : kRedBytes];
    __shared__ float tile_post[kTileTokens][kHc];        // post[token][j]
    __shared__ float tile_comb[kTileTokens][kHc][kHc];   // comb[token][i][j]
    Vec16* tile_x = reinterpret_cast<Vec16*>(tile_bytes);
    auto red = reinterpret_cast<float (*)[kTileTokens][kSmallRedPitch]>(tile_bytes);
    const int tid = threadIdx.x, lane = tid % dsv4::kWarpSize, warp = tid / dsv4::kWarpSize;
    const int g = lane / 4, q = lane % 4;
    const int chunk = blockIdx.x;
    const int64_t tile_token = int64_t(blockIdx.y) * kTileTokens;
    const int64_t vecs = args.vecs;

    // This warp's fn fragments: rows nt * 8 + g, copy j, elements 8q .. 8q + 7 of its K steps.
    const int j = warp % kHc, first_step = (warp / kHc) * kSmallStepsPerWarp;
    float4 fn_frag[kSmallStepsPerWarp][kNTiles][2];
    auto load_fn = [&] {
        const int64_t fn_row4 = vecs * 2 * kHc;  // float4s per fn row
#pragma unroll
        for (int st = 0; st < kSmallStepsPerWarp; ++st)
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt) {
                const int row = nt * 8 + g;
                const int64_t at = row * fn_row4 + (j * vecs + chunk * kChunkVecs) * 2 +
                                   (first_step + st) * (kStepK / 4) + 2 * q;
#pragma unroll
                for (int v = 0; v < 2; ++v)
                    fn_frag[st][nt][v] =
                        row < args.num_mix ? load_early(args.fn + at + v) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
    };
    // The tile: each input (the 4 copies, and f with kPost) of each row is 16 vectors, one per thread of a half warp.
    constexpr int kRowInputs = kPost ? kHc + 1 : kHc;
    auto load_tile_input = [&](int row, int i, int vec) {
        const int64_t token = tile_token + row;
        const bool valid = token < args.n_tokens;
        const int64_t col = int64_t(chunk) * kChunkVecs + vec;
        const Vec16* src = !valid    ? args.x
                           : i < kHc ? args.x + (token * kHc + i) * vecs + col
                                     : args.f + token * vecs + col;
        cp_async16(tile_x + row * kSmallRowVecs + i * kChunkVecs + vec, src, valid);
    };
    if constexpr (kLean) {
        // fn first (the most bytes per thread, from L2), then thread tid copies vector tid % 16 of each input of rows
        // tid / 16 + 16 k, unrolled. Against the linear order below (V4-Pro, H100): post_mix 1 token 4.8 -> 3.6 us,
        // 64 tokens 8.0 -> 7.4 (its index arithmetic, divisions by 5 and branches, was ~600 of ~2500 instructions per
        // warp, ncu).
        load_fn();
        constexpr int kRowsPerPass = kSmallThreads / kChunkVecs;
        static_assert(kTileTokens % kRowsPerPass == 0, "whole passes over the tile's rows");
#pragma unroll
        for (int k = 0; k < kTileTokens / kRowsPerPass; ++k)
#pragma unroll
            for (int i = 0; i < kRowInputs; ++i)
                load_tile_input(tid / kChunkVecs + k * kRowsPerPass, i, tid % kChunkVecs);
    } else {
        // Thread tid copies vectors tid + 256 k of the tile in order, fn after the tile's copies are issued.
        for (int v = tid; v < kTileTokens * kRowInputs * kChunkVecs; v += kSmallThreads)
            load_tile_input(v / (kRowInputs * kChunkVecs), (v / kChunkVecs) % kRowInputs, v % kChunkVecs);
    }
    for (int e = tid; kPost && e < kTileTokens * kHc * (1 + kHc) / 4; e += kSmallThreads) {  // post, comb: 16 B
        const bool is_post = e < kTileTokens;
        const int row = is_post ? e : (e - kTileTokens) / kHc;
        const bool valid = tile_token + row < args.n_tokens;
        const float* src = is_post ? args.post + (tile_token + row) * kHc
                                   : args.comb + (tile_token + row) * kHc * kHc + ((e - kTileTokens) % kHc) * kHc;
        float* dst = is_post ? &tile_post[row][0] : &tile_comb[row][(e - kTileTokens) % kHc][0];
        cp_async16(dst, valid ? src : args.post, valid);
    }
    cp_async_commit();
    if constexpr (!kLean) load_fn();
    cp_async_wait<0>();
    __syncthreads();

    float acc[kMTiles][kNTiles][4] = {};
    float sumsq[kMTiles][2] = {};
#pragma unroll
    for (int st = 0; st < kSmallStepsPerWarp; ++st) {
        const int c = (first_step + st) * (kStepK / kBf16PerVec) + q;  // the lane's vector of the chunk row
        Vec16 x[kMTiles][2];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = mt * kPostMixTile + h * 8 + g;
                const Vec16* xr = tile_x + row * kSmallRowVecs + c;
                if constexpr (kPost) {
                    float xs[kHc][8], fs[8];
#pragma unroll
                    for (int i = 0; i < kHc; ++i) dsv4::unpack_bf16x8(xr[i * kChunkVecs], xs[i]);
                    dsv4::unpack_bf16x8(xr[kHc * kChunkVecs], fs);
                    x[mt][h] = post_combine(xs, fs, tile_post[row][j], tile_comb[row][0][j], tile_comb[row][1][j],
                                            tile_comb[row][2][j], tile_comb[row][3][j]);
                    const int64_t token = tile_token + row;
                    if (token < args.n_tokens)
                        args.out[(token * kHc + j) * vecs + int64_t(chunk) * kChunkVecs + c] = x[mt][h];
                } else {
                    x[mt][h] = xr[j * kChunkVecs];
                }
            }
        mma_step_with<kMTiles, kNTiles>(acc, sumsq, x, [&](int nt, int u, uint32_t& hi0, uint32_t& hi1,
                                                           uint32_t& lo0, uint32_t& lo1) {
            split_tf32(component(fn_frag[st][nt][u / 2], (2 * u) % 4), hi0, lo0);
            split_tf32(component(fn_frag[st][nt][u / 2], (2 * u) % 4 + 1), hi1, lo1);
        });
    }
    __syncthreads();  // every warp is done with the X tile, whose bytes now take the products

    // Warp sums into red[warp]: C fragment element (h, e) of m tile mt, n tile nt is row mt * 16 + g + 8h, column
    // nt * 8 + 2q + e. Columns past num_mix (hc_head's n tile is half padding) are not stored: column num_mix takes
    // sum(X^2), from another lane (racecheck flagged the two stores to it).
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = mt * kPostMixTile + h * 8 + g;
            sumsq[mt][h] += __shfl_xor_sync(0xFFFFFFFFu, sumsq[mt][h], 1);
            sumsq[mt][h] += __shfl_xor_sync(0xFFFFFFFFu, sumsq[mt][h], 2);
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    if (nt * 8 + 2 * q + e < args.num_mix) red[warp][row][nt * 8 + 2 * q + e] = acc[mt][nt][2 * h + e];
            if (q == 0) red[warp][row][args.num_mix] = sumsq[mt][h];
        }
    __syncthreads();
    // Warp w stores the partial rows of tokens w, w + 8, ...: lane = column (row_len <= 25), no divisions.
    const int row_len = partial_row(args.num_mix);
    for (int row = warp; row < kTileTokens; row += kSmallWarps) {
        const int64_t token = tile_token + row;
        if (token >= args.n_tokens || lane >= row_len) continue;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kSmallWarps; ++w) sum += red[w][row][lane];
        args.partial[(int64_t(chunk) * args.n_tokens + token) * row_len + lane] = sum;
    }
}

// ---- host side ---------------------------------------------------------------------------------------------------

constexpr int64_t kMaxTokens = int64_t(65535) * kTileTokens;  // kernel 1's grid.y

int check_tokens_dim(int64_t n_tokens, int64_t dim) {
    DSV4_CHECK_ARG(n_tokens >= 0 && n_tokens <= kMaxTokens, DSV4_ERR_SHAPE, "n_tokens = %lld is not in [0, %lld]",
                   (long long)n_tokens, (long long)kMaxTokens);
    DSV4_CHECK_ARG(dim > 0 && dim % kQuantBlock == 0 && dim <= kMaxDim, DSV4_ERR_SHAPE,
                   "dim = %lld is not a positive multiple of %d at most %lld", (long long)dim, kQuantBlock,
                   (long long)kMaxDim);
    return DSV4_OK;
}

int check_workspace(const void* workspace, size_t workspace_bytes, int64_t n_tokens, int64_t k) {
    const size_t need = mix_workspace_bytes(n_tokens, k);
    if (workspace_bytes < need)
        return dsv4::fail(DSV4_ERR_WORKSPACE, "workspace_bytes = %zu < %zu needed for %lld tokens", workspace_bytes,
                          need, (long long)n_tokens);
    DSV4_CHECK_PTR(workspace, 16);
    return DSV4_OK;
}

template <int kNTiles>
int launch_mix_partial(float* partial, const void* x, const float* fn, int num_mix, int64_t n_tokens, int64_t k,
                       cudaStream_t stream) {
    const MixPlan plan = plan_mix(n_tokens, k);
    MixPartialArgs args{};
    args.partial = partial;
    args.x = static_cast<const Vec16*>(x);
    args.fn = reinterpret_cast<const float4*>(fn);
    args.n_tokens = n_tokens;
    args.k = k;
    args.k_per_split = plan.k_per_split;
    args.splits = static_cast<int>(plan.splits);
    args.num_mix = num_mix;
    const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(plan.tiles));
    constexpr size_t smem = mix_smem_bytes<kNTiles>();
    DSV4_CHECK_CUDA(cudaFuncSetAttribute(mix_partial_kernel<kNTiles>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    // Sized to an even wave (kTargetBlocks): overlapped, hc_pre at V4-Pro x 4096 took 297 us against 264.
    DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kAfterPrevious, mix_partial_kernel<kNTiles>, grid, kMixThreads,
                                          smem, stream, args));
    return DSV4_OK;
}

template <int kNTiles, int kMTiles, bool kPost, bool kLean>
cudaError_t launch_mix_small_instance(dim3 grid, dsv4::Launch mode, const PostMixArgs& args, cudaStream_t stream) {
    return dsv4::launch_kernel(mode, mix_small_kernel<kNTiles, kMTiles, kPost, kLean>, grid, kSmallThreads, 0, stream,
                               args);
}

// mix_small_kernel over args.n_tokens: a block per (128-dim chunk, tile of 16 or 32 tokens). 32-token tiles (fn read
// once per 32 tokens, not 16) once 16-token tiles would need more blocks than SMs; for post_mix (whose 32-token
// instance takes ~200 registers and 45 KB: one block per SM) only while its blocks then fit the SMs. V4-Pro on the
// H100, us, 16 -> 32-token tiles: post_mix 48 tokens 8.54 -> 7.77, 64 8.90 -> 8.25, but 95 (168 blocks) 11.2 ->
// 15.3; V4-Flash 95 8.64 -> 7.93, but 64 (128 blocks either way) 6.26 -> 7.28; standalone hc_pre 64 13.4 -> 11.9,
// 192 26.3 -> 23.3; hc_head within +-0.2 below 96 tokens, 192 16.5 -> 15.2. Overlapping the previous kernel (PDL)
// pays while the grid fits the SMs (post_mix 1 token 5.05 -> 4.78 us); beyond, the early CTAs pile onto the SMs
// freed first (post_mix 64 tokens on 224 blocks 8.9 -> 9.6 us).
// Lean loads everywhere but where the linear order measured faster (V4-Pro, H100): hc_pre's 32-token tiles (lean: 64
// tokens 12.6 us against 10.2, 48 tokens 12.2 against 9.8; not understood), and post_mix grids beyond one wave of
// blocks, where the linear instance's ~80 registers fit 3 blocks per SM and the lean one's ~107 only 2 (95 tokens,
// 336 blocks: 11.5 us against 10.8).
template <int kNTiles, bool kPost>
int launch_mix_small(const PostMixArgs& args, cudaStream_t stream) {
    const int64_t chunks = args.vecs / kChunkVecs, sms = dsv4::sm_count();
    const int64_t narrow_blocks = chunks * ((args.n_tokens + kPostMixTile - 1) / kPostMixTile);
    const int64_t wide_blocks = chunks * ((args.n_tokens + 2 * kPostMixTile - 1) / (2 * kPostMixTile));
    const bool wide = narrow_blocks > sms && (!kPost || wide_blocks <= sms);
    const int64_t blocks = wide ? wide_blocks : narrow_blocks;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(blocks / chunks));
    const dsv4::Launch mode = blocks <= sms ? dsv4::Launch::kOverlapPrevious : dsv4::Launch::kAfterPrevious;
    constexpr bool kLeanWide = kPost || kNTiles == 1;
    if (wide) {
        DSV4_CHECK_LAUNCH(launch_mix_small_instance<kNTiles, 2, kPost, kLeanWide>(grid, mode, args, stream));
        return DSV4_OK;
    }
    if constexpr (kPost) {
        if (blocks > sms) {
            DSV4_CHECK_LAUNCH(launch_mix_small_instance<kNTiles, 1, kPost, false>(grid, mode, args, stream));
            return DSV4_OK;
        }
    }
    DSV4_CHECK_LAUNCH(launch_mix_small_instance<kNTiles, 1, kPost, true>(grid, mode, args, stream));
    return DSV4_OK;
}

// hc_pre's finalize is a warp per token from warp_fin_min_tokens(vecs). One warp walks a token's whole row and its
// partial rows, and at 1024 tokens (one token a warp, a single wave) a V4-Pro row makes that walk the launch's time:
// H100, hc_pre / hc_pre from partials at 1024 tokens, warp against block finalize: V4-Pro 74.7 / 41.9 against 67.0 /
// 34.1 us; V4-Flash 45.0 / 26.0 against 47.5 / 26.2; at 2048 tokens V4-Pro's rows take the warp finalize at 0.96 of
// copy bandwidth (from partials).
int64_t warp_fin_min_tokens(int64_t vecs) { return vecs * kBf16PerVec <= 4096 ? 1024 : 2048; }

template <bool kPre>
int launch_finalize(FinalizeArgs args, int64_t n_tokens, cudaStream_t stream) {
    args.n_tokens = n_tokens;
    if constexpr (kPre) {
        if (n_tokens >= warp_fin_min_tokens(args.vecs)) {
            const size_t smem = sizeof(Vec16) * kFinWarps * args.vecs;
            DSV4_CHECK_CUDA(cudaFuncSetAttribute(finalize_warp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem)));
            const int64_t blocks = (n_tokens + kFinWarps - 1) / kFinWarps;
            DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, finalize_warp_kernel,
                                                  static_cast<unsigned>(blocks), kFinThreads, smem, stream, args));
            return DSV4_OK;
        }
    }
    DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, finalize_block_kernel<kPre>,
                                          static_cast<unsigned>(n_tokens), block_fin_threads(kPre), 0, stream, args));
    return DSV4_OK;
}

template <int kNTiles>
int launch_post_mix(const PostMixArgs& base, cudaStream_t stream) {
    PostMixArgs args = base;
    const int64_t splits = args.vecs * kBf16PerVec / kPostMixDims;
    args.tiles = (args.n_tokens + kPostMixTile - 1) / kPostMixTile;
    if (args.n_tokens < kPostMixSmallMaxTokens) return launch_mix_small<kNTiles, true>(args, stream);
    // One block per SM, each loading its fn slice once: as many token groups as fill the SMs in one wave (so it is
    // launched after the previous kernel, not overlapping it: Launch::kAfterPrevious).
    const int64_t want_groups = std::clamp<int64_t>(dsv4::sm_count() / splits, 1, args.tiles);
    args.tiles_per_group = (args.tiles + want_groups - 1) / want_groups;
    const int64_t groups = (args.tiles + args.tiles_per_group - 1) / args.tiles_per_group;
    const size_t smem = post_mix_smem_bytes(kNTiles);
    DSV4_CHECK_CUDA(cudaFuncSetAttribute(post_mix_kernel<kNTiles>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(groups));
    DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kAfterPrevious, post_mix_kernel<kNTiles>, grid,
                                          kPostMixThreads, smem, stream, args));
    return DSV4_OK;
}

// hc_post's out may be x itself (each element is read before it is written, by the same thread) but not overlap it
// otherwise.
int check_in_place(const void* out, const void* x, int64_t n_tokens, int64_t dim) {
    const char* o = static_cast<const char*>(out);
    const char* xi = static_cast<const char*>(x);
    const int64_t bytes = n_tokens * kHc * dim * 2;
    DSV4_CHECK_ARG(o == xi || o + bytes <= xi || xi + bytes <= o, DSV4_ERR_ARGUMENT,
                   "out overlaps x without being equal to it");
    return DSV4_OK;
}

// The finalize's partials: given by dsv4_mhc_post_mix_bf16 (dim / 128 splits), or formed here in the workspace by
// kernel 1 or (fewer than kStandaloneSmallMaxTokens tokens) mix_small_kernel. Params: dsv4_mhc_pre_params or
// dsv4_mhc_head_params.
template <int kNTiles, typename Params>
int mix_partials(const Params& p, int num_mix, cudaStream_t stream, const float** partial, int* splits) {
    if (p.partials != nullptr) {
        DSV4_CHECK_FIELD_PTR(p, partials, 16);
        *partial = p.partials;
        *splits = static_cast<int>(p.dim / kPostMixDims);
        return DSV4_OK;
    }
    const int64_t k = kHc * p.dim;
    DSV4_CHECK_FIELD_PTR(p, fn, 16);
    DSV4_RETURN_IF_FAILED(check_workspace(p.workspace, p.workspace_bytes, p.n_tokens, k));
    *partial = static_cast<const float*>(p.workspace);
    if (p.n_tokens < kStandaloneSmallMaxTokens) {
        PostMixArgs args{};
        args.partial = static_cast<float*>(p.workspace);
        args.x = static_cast<const Vec16*>(p.x);
        args.fn = reinterpret_cast<const float4*>(p.fn);
        args.n_tokens = p.n_tokens;
        args.vecs = p.dim / kBf16PerVec;
        args.num_mix = num_mix;
        *splits = static_cast<int>(p.dim / kPostMixDims);
        return launch_mix_small<kNTiles, false>(args, stream);
    }
    *splits = static_cast<int>(plan_mix(p.n_tokens, k).splits);
    return launch_mix_partial<kNTiles>(static_cast<float*>(p.workspace), p.x, p.fn, num_mix, p.n_tokens, k, stream);
}

}  // namespace

DSV4_API size_t dsv4_mhc_pre_params_size(void) { return sizeof(dsv4_mhc_pre_params); }
DSV4_API size_t dsv4_mhc_head_params_size(void) { return sizeof(dsv4_mhc_head_params); }

DSV4_API size_t dsv4_mhc_pre_workspace_bytes(int64_t n_tokens, int64_t dim) {
    return dim > 0 && dim <= kMaxDim && n_tokens <= kMaxTokens ? mix_workspace_bytes(n_tokens, kHc * dim) : 0;
}

DSV4_API size_t dsv4_mhc_head_workspace_bytes(int64_t n_tokens, int64_t dim) {
    const size_t mix = dsv4_mhc_pre_workspace_bytes(n_tokens, dim);
    return mix > 0 && n_tokens >= kResMinTokens ? std::max(mix, resident_workspace_bytes(n_tokens, dim)) : mix;
}

DSV4_API int dsv4_mhc_pre_bf16(const dsv4_mhc_pre_params* params, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_PTR(params, alignof(dsv4_mhc_pre_params));
        const dsv4_mhc_pre_params& p = *params;
        DSV4_RETURN_IF_FAILED(check_tokens_dim(p.n_tokens, p.dim));
        DSV4_CHECK_ARG(p.sinkhorn_iters >= 1 && p.sinkhorn_iters <= 1000, DSV4_ERR_ARGUMENT,
                       "sinkhorn_iters = %lld is not in [1, 1000]", (long long)p.sinkhorn_iters);
        DSV4_RETURN_IF_FAILED(dsv4::check_eps(p.hc_eps, "hc_eps"));
        DSV4_RETURN_IF_FAILED(dsv4::check_eps(p.mix_eps, "mix_eps"));
        DSV4_RETURN_IF_FAILED(dsv4::check_eps(p.norm_eps, "norm_eps"));
        DSV4_CHECK_ARG((p.q == nullptr) == (p.scale == nullptr), DSV4_ERR_ARGUMENT,
                       "q and scale must both be NULL or both be set");
        if (p.q != nullptr)
            DSV4_RETURN_IF_FAILED(dsv4::check_scale_strides(p.n_tokens, p.dim / kQuantBlock, p.scale_stride_token,
                                                 p.scale_stride_block));
        if (p.n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_FIELD_PTR(p, post, 4);
        DSV4_CHECK_FIELD_PTR(p, comb, 4);
        if (p.y != nullptr) DSV4_CHECK_FIELD_PTR(p, y, 16);
        if (p.q != nullptr) {
            DSV4_CHECK_FIELD_PTR(p, q, 8);
            DSV4_CHECK_FIELD_PTR(p, scale, 4);
        }
        DSV4_CHECK_FIELD_PTR(p, x, 16);
        DSV4_CHECK_FIELD_PTR(p, hc_scale, 4);
        DSV4_CHECK_FIELD_PTR(p, hc_base, 4);
        DSV4_CHECK_FIELD_PTR(p, norm_weight, 16);
        const int64_t k = kHc * p.dim;
        const float* partial = nullptr;
        int splits = 0;
        DSV4_RETURN_IF_FAILED(mix_partials<kPreMix / 8>(p, kPreMix, stream, &partial, &splits));
        FinalizeArgs args{};
        args.post = p.post;
        args.comb = p.comb;
        args.y = static_cast<Vec16*>(p.y);
        args.q = static_cast<uint2*>(p.q);
        args.y_scale = p.scale;
        args.partial = partial;
        args.x = static_cast<const Vec16*>(p.x);
        args.hc_scale = p.hc_scale;
        args.hc_base = p.hc_base;
        args.norm_weight = reinterpret_cast<const float4*>(p.norm_weight);
        args.vecs = p.dim / kBf16PerVec;
        args.scale_stride_token = p.scale_stride_token;
        args.scale_stride_block = p.scale_stride_block;
        args.splits = splits;
        args.sinkhorn_iters = static_cast<int>(p.sinkhorn_iters);
        args.k = static_cast<float>(k);
        args.dim = static_cast<float>(p.dim);
        args.hc_eps = p.hc_eps;
        args.mix_eps = p.mix_eps;
        args.norm_eps = p.norm_eps;
        return launch_finalize<true>(args, p.n_tokens, stream);
    });
}

DSV4_API int dsv4_mhc_head_bf16(const dsv4_mhc_head_params* params, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_PTR(params, alignof(dsv4_mhc_head_params));
        const dsv4_mhc_head_params& p = *params;
        DSV4_RETURN_IF_FAILED(check_tokens_dim(p.n_tokens, p.dim));
        DSV4_RETURN_IF_FAILED(dsv4::check_eps(p.hc_eps, "hc_eps"));
        DSV4_RETURN_IF_FAILED(dsv4::check_eps(p.mix_eps, "mix_eps"));
        DSV4_RETURN_IF_FAILED(dsv4::check_eps(p.norm_eps, "norm_eps"));
        if (p.n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_FIELD_PTR(p, y, 16);
        DSV4_CHECK_FIELD_PTR(p, x, 16);
        DSV4_CHECK_FIELD_PTR(p, hc_scale, 4);
        DSV4_CHECK_FIELD_PTR(p, hc_base, 4);
        if (p.norm_weight != nullptr) DSV4_CHECK_FIELD_PTR(p, norm_weight, 16);
        if (p.partials == nullptr && use_cluster_head(p.n_tokens, p.dim)) return launch_cluster_head(p, stream);
        if (p.partials == nullptr && use_resident_head(p.n_tokens, p.dim)) {
            bool launched = false;
            DSV4_RETURN_IF_FAILED(launch_resident_head(p, stream, &launched));
            if (launched) return DSV4_OK;
        }
        const float* partial = nullptr;
        int splits = 0;
        DSV4_RETURN_IF_FAILED(mix_partials<kHeadMix / 4>(p, kHeadMix, stream, &partial, &splits));
        FinalizeArgs args = head_args(p);
        args.partial = partial;
        args.splits = splits;
        return launch_finalize<false>(args, p.n_tokens, stream);
    });
}

DSV4_API int dsv4_mhc_post_bf16(void* out, const void* x, const void* f, const float* post, const float* comb,
                                int64_t n_tokens, int64_t dim, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_ARG(n_tokens >= 0 && n_tokens <= INT32_MAX, DSV4_ERR_SHAPE, "n_tokens = %lld is not in [0, 2^31)",
                       (long long)n_tokens);
        DSV4_CHECK_ARG(dim > 0 && dim % kBf16PerVec == 0 && dim <= (INT64_C(1) << 24), DSV4_ERR_SHAPE,
                       "dim = %lld is not a positive multiple of %d at most 2^24", (long long)dim, kBf16PerVec);
        if (n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_PTR(out, 16);
        DSV4_CHECK_PTR(x, 16);
        DSV4_CHECK_PTR(f, 16);
        DSV4_CHECK_PTR(post, 16);
        DSV4_CHECK_PTR(comb, 16);
        const int64_t vecs = dim / kBf16PerVec;
        DSV4_RETURN_IF_FAILED(check_in_place(out, x, n_tokens, dim));
        const dim3 grid(static_cast<unsigned>(n_tokens),
                        static_cast<unsigned>((vecs + kPostThreads - 1) / kPostThreads));
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, hc_post_kernel, grid, kPostThreads, 0,
                                              stream, static_cast<Vec16*>(out), static_cast<const Vec16*>(x),
                                              static_cast<const Vec16*>(f),
                                              reinterpret_cast<const float4*>(post),
                                              reinterpret_cast<const float4*>(comb), vecs));
        return DSV4_OK;
    });
}

DSV4_API size_t dsv4_mhc_post_mix_params_size(void) { return sizeof(dsv4_mhc_post_mix_params); }

DSV4_API size_t dsv4_mhc_post_mix_partials_bytes(int64_t n_tokens, int64_t dim) {
    if (n_tokens <= 0 || n_tokens > kMaxTokens || dim <= 0 || dim % kPostMixDims != 0 || dim > kMaxDim) return 0;
    return static_cast<size_t>(n_tokens * (dim / kPostMixDims) * kMaxPartialRow * sizeof(float));
}

DSV4_API int dsv4_mhc_post_mix_bf16(const dsv4_mhc_post_mix_params* params, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_PTR(params, alignof(dsv4_mhc_post_mix_params));
        const dsv4_mhc_post_mix_params& p = *params;
        DSV4_CHECK_ARG(p.n_tokens >= 0 && p.n_tokens <= kMaxTokens, DSV4_ERR_SHAPE,
                       "n_tokens = %lld is not in [0, %lld]", (long long)p.n_tokens, (long long)kMaxTokens);
        DSV4_CHECK_ARG(p.dim > 0 && p.dim % kPostMixDims == 0 && p.dim <= kMaxDim, DSV4_ERR_SHAPE,
                       "dim = %lld is not a positive multiple of %d at most %lld", (long long)p.dim, kPostMixDims,
                       (long long)kMaxDim);
        DSV4_CHECK_ARG(p.num_mix == kPreMix || p.num_mix == kHeadMix, DSV4_ERR_ARGUMENT,
                       "num_mix = %lld is neither %d (hc_pre) nor %d (hc_head)", (long long)p.num_mix, kPreMix,
                       kHeadMix);
        if (p.n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_FIELD_PTR(p, out, 16);
        DSV4_CHECK_FIELD_PTR(p, partials, 16);
        DSV4_CHECK_FIELD_PTR(p, x, 16);
        DSV4_CHECK_FIELD_PTR(p, f, 16);
        DSV4_CHECK_FIELD_PTR(p, post, 16);
        DSV4_CHECK_FIELD_PTR(p, comb, 16);
        DSV4_CHECK_FIELD_PTR(p, fn, 16);
        DSV4_RETURN_IF_FAILED(check_in_place(p.out, p.x, p.n_tokens, p.dim));
        PostMixArgs args{};
        args.out = static_cast<Vec16*>(p.out);
        args.partial = p.partials;
        args.x = static_cast<const Vec16*>(p.x);
        args.f = static_cast<const Vec16*>(p.f);
        args.post = p.post;
        args.comb = p.comb;
        args.fn = reinterpret_cast<const float4*>(p.fn);
        args.n_tokens = p.n_tokens;
        args.vecs = p.dim / kBf16PerVec;
        args.num_mix = static_cast<int>(p.num_mix);
        return p.num_mix == kPreMix ? launch_post_mix<kPreMix / 8>(args, stream) : launch_post_mix<1>(args, stream);
    });
}
