// Rotary embeddings of the attention (SPEC section 5): the cos/sin table, the q path (per-head RMS scaling +
// RoPE, in place), the kv path (kv_norm + RoPE + FP8 straight into KV-cache rows) and the inverse RoPE of the
// attention output. Heads are D = 512 wide; RoPE touches the last R = 64 dims, as 32 consecutive pairs
// (2k, 2k+1) rotated by the angle fp32(pos) * freq_k.
//
// The table. Angles are looked up, not computed in the kernels: table[pos, k] = (cos, sin) of fl32(pos * freq_k)
// as fp32, built once per frequency set by dsv4_rope_table_f32 (sin and cos in double precision of the fp32
// angle, then rounded: the correctly rounded fp32 values up to one double rounding). 256 bytes per position:
// 256 MiB for 1M positions per frequency set (two sets in V4: plain for ratio-0 layers, YaRN for the others).
// Computing sincosf in the kernels instead would cost 32 precise sincosf per token per kernel and, for the
// angles above ~1e5 rad that positions beyond ~100k reach (freq_0 = 1), the slow Payne-Hanek reduction with its
// local-memory array; the table turns that into one 256-byte row read per token, cached across heads.
//
// Arithmetic is NumPy's (ops.apply_rope): re' = re*c - im*s, im' = re*s + im*c with every product and sum
// rounded to fp32 (no FMA contraction), bf16 out; the inverse rotation negates s. q and kv are normalized and
// rounded to bf16 before the rotation, as the reference does.
//
// KV-cache rows (FlashMLA's "MODEL1" FP8 layout). A cache is a sequence of page blocks of block_size tokens,
// block_stride_bytes apart. In a page block, token i's 576 data bytes are at i * 576 and its 8 scale bytes at
// block_size * 576 + i * 8:
//   data  [0, 448)   e4m3 of the 448 "nope" dims, 7 blocks of 64, each divided by its scale
//         [448, 576) the 64 rotated dims as bf16
//   scale [0, 7)     e8m0 byte b = 127 + log2(scale) of each nope block;  [7] zero
// With block_size = 1 and block_stride_bytes = 584 this is one 584-byte record per token: [nope | rope | scales |
// 0], the layout of the sliding-window ring and of contiguous buffers. pydsv4/cuda/families/rope.py packs and
// unpacks it on the host.
#include <algorithm>

#include "common.cuh"

namespace {

using dsv4::Vec16;

constexpr int kHeadDim = 512;                      // D
constexpr int kRopeDim = 64;                       // R
constexpr int kNopeDim = kHeadDim - kRopeDim;      // N = 448
constexpr int kPairs = kRopeDim / 2;               // rows of the table have 32 (cos, sin) pairs
constexpr int kBf16PerVec = 8;
constexpr int kHeadVecs = kHeadDim / kBf16PerVec;  // 64 vectors per head
constexpr int kRopeVecs = kRopeDim / kBf16PerVec;  // the last 8 of them are rotary
constexpr int kKvBlock = 64;                       // FP8 block of the nope dims
constexpr int kKvScales = kNopeDim / kKvBlock;     // 7
constexpr int kKvDataBytes = kNopeDim + 2 * kRopeDim;  // 576
constexpr int kKvScaleBytes = 8;                        // 7 e8m0 + 1 zero
constexpr int kKvRecordBytes = kKvDataBytes + kKvScaleBytes;  // 584
constexpr int kMaxTablePositions = 1 << 24;  // fp32(pos) is exact below 2^24

// ---- table --------------------------------------------------------------------------------------------------

constexpr int kTableThreads = 256;

__global__ void __launch_bounds__(kTableThreads)
    rope_table_kernel(float2* __restrict__ table,       // [n_positions, n_pairs] (cos, sin)
                      const float* __restrict__ freqs,  // [n_pairs]
                      int64_t n_positions, int64_t n_pairs) {
    dsv4::await_previous_kernel();
    const int64_t n = n_positions * n_pairs;
    for (int64_t i = blockIdx.x * int64_t(kTableThreads) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * kTableThreads) {
        const int64_t pos = i / n_pairs, k = i % n_pairs;
        const float angle = __fmul_rn(static_cast<float>(pos), __ldg(freqs + k));  // the fp32 angle of SPEC 5
        double s, c;
        sincos(static_cast<double>(angle), &s, &c);
        table[i] = make_float2(static_cast<float>(c), static_cast<float>(s));
    }
}

// ---- rotation -------------------------------------------------------------------------------------------------

// (cos, sin) of 4 consecutive pairs of a table row: c0 s0 c1 s1 | c2 s2 c3 s3.
struct CosSin4 {
    float4 lo, hi;
};

// The pairs first_pair .. first_pair + 3 of position `pos`; false (and nothing loaded) when pos is outside the
// table: the rotated dims then become NaN, since a wrong position must not yield plausible numbers and the host
// cannot check device positions without a sync.
__device__ __forceinline__ bool load_cos_sin4(CosSin4& cs, const float2* __restrict__ table, int32_t pos,
                                              int64_t table_positions, int first_pair) {
    if (pos < 0 || pos >= table_positions) return false;
    const float4* row = reinterpret_cast<const float4*>(table + int64_t(pos) * kPairs) + first_pair / 2;
    cs.lo = __ldg(row);
    cs.hi = __ldg(row + 1);
    return true;
}

// Before await_previous_kernel(): the position as it reads now (the previous kernel may still be writing it; -1 when
// there is no token) and its 32 bytes of the table row warmed in L2. Positions are inputs of the whole forward pass,
// so the kernel just before (a GEMM, another rope op) rarely writes them: after the wait the kernel loads the row of
// this early position at once, beside the position itself, and keeps it when the two agree, so the table costs no
// round trip of its own.
__device__ __forceinline__ int32_t early_position(const float2* table, const int32_t* position,
                                                  int64_t table_positions, int first_pair) {
    const int32_t pos = dsv4::load_for_prefetch(position);
    if (pos >= 0 && pos < table_positions) dsv4::prefetch_l2(table + int64_t(pos) * kPairs + first_pair);
    return pos;
}

// Rotates the 4 pairs of f (8 values), or fills them with NaN when the position had no table row.
template <bool kInverse>
__device__ __forceinline__ void rotate4(float (&f)[8], const CosSin4& t, bool in_table) {
    if (!in_table) {
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = __uint_as_float(0x7FC00000u);
        return;
    }
    const float cs[8] = {t.lo.x, t.lo.y, t.lo.z, t.lo.w, t.hi.x, t.hi.y, t.hi.z, t.hi.w};
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const float c = cs[2 * p], s = kInverse ? -cs[2 * p + 1] : cs[2 * p + 1];
        const float re = f[2 * p], im = f[2 * p + 1];
        f[2 * p] = __fsub_rn(__fmul_rn(re, c), __fmul_rn(im, s));
        f[2 * p + 1] = __fadd_rn(__fmul_rn(re, s), __fmul_rn(im, c));
    }
}

// ---- q path ---------------------------------------------------------------------------------------------------

constexpr int kHeadsPerBlock = 4;  // one warp per (token, head)

// q[t, h, :] = rope_tail(bf16(q / sqrt(mean(q^2) + eps))), in place. Lane l holds vectors l and l + 32 of the
// head (two 512-byte coalesced accesses per warp); vectors 56..63 (lanes 24..31, second vector) are rotary.
__global__ void __launch_bounds__(kHeadsPerBlock * dsv4::kWarpSize)
    q_norm_rope_kernel(Vec16* __restrict__ q,                 // [n_tokens, q_stride_vecs], heads of 64 vectors
                       const int32_t* __restrict__ positions,  // [n_tokens]
                       const float2* __restrict__ table,       // [table_positions, 32]
                       int64_t n_heads_total, int64_t n_heads, int64_t q_stride_vecs, int64_t table_positions,
                       float eps, bool warm_early) {
    const int64_t head = blockIdx.x * int64_t(kHeadsPerBlock) + threadIdx.x / dsv4::kWarpSize;
    const int lane = threadIdx.x % dsv4::kWarpSize;
    const int64_t t = head / n_heads;
    Vec16* qh = q + t * q_stride_vecs + (head % n_heads) * kHeadVecs;
    constexpr int kFirstRopeLane = kHeadVecs - kRopeVecs - 32;  // 24
    const bool rope_lane = lane >= kFirstRopeLane;
    const int first_pair = (lane - kFirstRopeLane) * 4;
    // Before the wait, as the kv path does: the head's row and the table row of the early position warmed in L2, when
    // the grid is one wave (warm_early). Blocks of later waves start once the previous kernel has ended, where the
    // early position's load only adds a round trip before the row's loads. H100, the bench's timing, two runs, us
    // at 1 / 64 / 1024 / 4096 tokens, the position loaded after the wait and then its row -> every block warming:
    // V4-Pro 1.83-1.84 / 8.80-8.81 / 95.7 / 372.8-372.9 -> 1.52-1.55 / 7.88-7.95 / 97.9-98.1 / 385.1-385.3, V4-Flash
    // 1.81-1.82 / 5.40-5.43 / 50.3 / 190.5-190.6 -> 1.46-1.47 / 4.44-4.47 / 50.4-50.6 / 195.7-195.9; one wave only
    // (as here; the later waves' position loaded before the rows, not after), against 1.83 / 8.78 / 95.5 / 372.5 and
    // 1.78 / 5.33-5.34 / 50.2 / 190.4 in the same runs: V4-Pro 1.51-1.55 / 7.68-7.69 / 91.2 / 358.7, V4-Flash 1.48-
    // 1.49 / 4.47-4.50 / 46.9-47.0 / 180.9.
    int32_t pos_early = -1;
    if (warm_early && head < n_heads_total) {
        if (rope_lane) pos_early = early_position(table, positions + t, table_positions, first_pair);
        if (lane == 0) dsv4::prefetch_l2_bulk(qh, kHeadVecs * sizeof(Vec16));
    }
    dsv4::await_previous_kernel();
    if (head >= n_heads_total) return;  // whole warps
    const int32_t pos = __ldg(positions + t);
    const Vec16 va = qh[lane], vb = qh[lane + 32];
    CosSin4 cs;
    bool in_table = rope_lane && load_cos_sin4(cs, table, pos_early, table_positions, first_pair);
    if (rope_lane && pos != pos_early) in_table = load_cos_sin4(cs, table, pos, table_positions, first_pair);

    float a[8], b[8];
    dsv4::unpack_bf16x8(va, a);
    dsv4::unpack_bf16x8(vb, b);
    float sum = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) sum = fmaf(b[e], b[e], fmaf(a[e], a[e], sum));
    sum = dsv4::warp_reduce_sum(sum);
    // ops.q_head_norm divides by the root (it does not multiply by its inverse).
    const float root = sqrtf(__fdiv_rn(sum, float(kHeadDim)) + eps);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] = __fdiv_rn(a[e], root), b[e] = __fdiv_rn(b[e], root);
    qh[lane] = dsv4::pack_bf16x8(a);
    Vec16 out_b = dsv4::pack_bf16x8(b);
    if (rope_lane) {
        dsv4::unpack_bf16x8(out_b, b);  // rotate the bf16-rounded normed values
        rotate4<false>(b, cs, in_table);
        out_b = dsv4::pack_bf16x8(b);
    }
    qh[lane + 32] = out_b;
}

// ---- inverse rope on the attention output ---------------------------------------------------------------------

constexpr int kInverseThreads = 256;        // a block per token
constexpr int kInverseNarrowThreads = 128;  // the same for up to 64 heads beyond one wave of blocks
constexpr int kInverseUnroll = 4;           // 16-byte loads in flight per thread (128 heads: all of a token's)

// One block per token; thread u of the token's n_heads * 8 rotary vectors handles head u / 8, pairs 4 (u % 8)...
// kThreads is a template constant, so the unit indices fold at compile time.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    inverse_rope_kernel(Vec16* __restrict__ o,                 // [n_tokens, o_stride_vecs], heads of 64 vectors
                        const int32_t* __restrict__ positions,  // [n_tokens]
                        const float2* __restrict__ table,       // [table_positions, 32]
                        int64_t n_heads, int64_t o_stride_vecs, int64_t table_positions) {
    static_assert(kThreads % kRopeVecs == 0, "a thread's units all take pairs first_pair .. first_pair + 3");
    const int64_t t = blockIdx.x;
    const int first_pair = (threadIdx.x % kRopeVecs) * 4;
    Vec16* ot = o + t * o_stride_vecs + (kHeadVecs - kRopeVecs);
    const int units = static_cast<int>(n_heads) * kRopeVecs;
    // Before the wait, as the kv path does: L2 warmed with the token's rotary slices (128 bytes a head) and the
    // table row of the position as it reads now, so that after the wait the slices, the position and that row
    // arrive in one round trip (the row is read again only when the position has changed since). Against the
    // position loaded after the wait and then its row (H100, the bench's timing, two runs, us at 1 / 64 / 1100 /
    // 4096 tokens): V4-Pro 1.63 / 2.74-2.78 / 16.25 / 53.9-54.1 -> 1.48-1.49 / 1.94-1.96 / 15.4 / 52.75, V4-Flash
    // 1.30-1.32 / 2.01-2.02 / 9.06-9.09 / 28.4 -> 1.36-1.40 / 1.75 / 8.24-8.27 / 27.0 (the one slower case: a lone
    // block's threads stall on the early position's load before they reach the wait).
    const int32_t pos_early = early_position(table, positions + t, table_positions, first_pair);
    for (int64_t h = threadIdx.x; h < n_heads; h += kThreads)
        dsv4::prefetch_l2_bulk(ot + h * kHeadVecs, kRopeVecs * sizeof(Vec16));
    dsv4::await_previous_kernel();
    const int32_t pos = __ldg(positions + t);
    CosSin4 cs;
    bool in_table = load_cos_sin4(cs, table, pos_early, table_positions, first_pair);
    for (int base = threadIdx.x; base < units; base += kInverseUnroll * kThreads) {
        Vec16 v[kInverseUnroll];
#pragma unroll
        for (int i = 0; i < kInverseUnroll; ++i) {
            const int u = base + i * kThreads;
            if (u < units) v[i] = ot[(u / kRopeVecs) * kHeadVecs + u % kRopeVecs];
        }
        if (base == threadIdx.x && pos != pos_early)  // after the first units' loads are issued
            in_table = load_cos_sin4(cs, table, pos, table_positions, first_pair);
#pragma unroll
        for (int i = 0; i < kInverseUnroll; ++i) {
            const int u = base + i * kThreads;
            if (u >= units) continue;
            float f[8];
            dsv4::unpack_bf16x8(v[i], f);
            rotate4<true>(f, cs, in_table);
            ot[(u / kRopeVecs) * kHeadVecs + u % kRopeVecs] = dsv4::pack_bf16x8(f);
        }
    }
}

// The narrow blocks when a token's rotary vectors fill them at kInverseUnroll a thread (<= 64 heads) and the tokens
// exceed the resident 256-thread blocks (8 an SM): the SMs then hold twice the bytes in flight, where 256 threads
// left half of each thread's loads idle. V4-Flash (64 heads) on the H100, 1100 / 2048 / 4096 tokens: 9.93 / 17.1 /
// 32.8 -> 9.15 / 15.25 / 28.5 us (copy/ours at 4096 0.74 -> 0.85); at 1 and 64 tokens 128-thread blocks were slower
// (1.33 -> 1.50, 2.05 -> 2.21 us).
bool inverse_narrow(int64_t n_tokens, int64_t n_heads) {
    constexpr int64_t kResidentPerSm = 2048 / kInverseThreads;
    return n_heads * kRopeVecs <= int64_t(kInverseUnroll) * kInverseNarrowThreads &&
           n_tokens > kResidentPerSm * dsv4::sm_count();
}

// ---- kv path --------------------------------------------------------------------------------------------------

constexpr int kKvTokensPerBlock = 4;  // one warp per token
// Tokens per block measured (V4-Pro on the H100, the bench's timing, us at 1 / 64 / 4096 tokens, against 1.36 /
// 1.46-1.48 / 4.21 for 4): 1 token a block 1.38 / 1.50-1.60 / 5.96, 2 1.36 / 1.45-1.46 / 4.14, 8 1.37 / 1.65 / 4.00.
// At 64 tokens the launch is one round trip (1.11 us for the same bytes' copy): the block shape does not move it.

// A slot's page and place in it, slot / block_size as a multiply and a shift, for slot, block_size < 2^31: with
// 2^(l - 1) < block_size <= 2^l, multiplier = ceil(2^(31 + l) / block_size) < 2^32 exceeds 2^(31 + l) / block_size by
// e < 1, and slot e / 2^(31 + l) < 2^-l <= 1 / block_size stays short of the next multiple of 1 / block_size: the
// quotient is exact. Set on the host (page_divisor).
struct PageDivisor {
    uint32_t block_size;
    uint32_t multiplier;
    uint32_t shift;  // 31 + l
    __device__ __forceinline__ void split(uint32_t slot, uint32_t& page, uint32_t& in_page) const {
        page = static_cast<uint32_t>((uint64_t(slot) * multiplier) >> shift);
        in_page = slot - page * block_size;
    }
};

PageDivisor page_divisor(int64_t block_size) {  // block_size in [1, 2^31)
    uint32_t l = 0;
    while ((int64_t(1) << l) < block_size) ++l;
    const uint64_t whole = uint64_t(1) << (31 + l);
    return PageDivisor{static_cast<uint32_t>(block_size),
                       static_cast<uint32_t>((whole + uint64_t(block_size) - 1) / uint64_t(block_size)), 31 + l};
}

__device__ __forceinline__ void load_weight8(float (&w)[8], const float4* weight, int vec) {
    const float4 w0 = __ldg(weight + 2 * vec), w1 = __ldg(weight + 2 * vec + 1);
    w[0] = w0.x, w[1] = w0.y, w[2] = w0.z, w[3] = w0.w, w[4] = w1.x, w[5] = w1.y, w[6] = w1.z, w[7] = w1.w;
}


// Lane l holds vectors l and l + 32 of the 512-dim row: FP8 block g (vectors 8g..8g+7) is lanes 8(g%4)..+7 of
// the first (g < 4) or second (g >= 4) vector; lanes 24..31 of the second are the rotary dims. Cache rows are
// only 8-byte aligned (584-byte records), so every cache store is 8 bytes wide.
__global__ void __launch_bounds__(kKvTokensPerBlock * dsv4::kWarpSize)
    kv_norm_rope_fp8_kernel(uint8_t* __restrict__ cache,               // page blocks, see the file comment
                            const Vec16* __restrict__ kv,               // [n_tokens, kv_stride_vecs] bf16
                            const float4* __restrict__ weight,          // [512 / 4] fp32
                            const int32_t* __restrict__ positions,      // [n_tokens]
                            const int32_t* __restrict__ slot_mapping,   // [n_tokens]
                            const float2* __restrict__ table,           // [table_positions, 32]
                            int64_t n_tokens, int64_t n_slots, PageDivisor pages, int64_t block_stride_bytes,
                            int64_t kv_stride_vecs, int64_t table_positions, float eps) {
    const int64_t t = blockIdx.x * int64_t(kKvTokensPerBlock) + threadIdx.x / dsv4::kWarpSize;
    const int lane = threadIdx.x % dsv4::kWarpSize;
    constexpr int kFirstRopeLane = kHeadVecs - kRopeVecs - 32;  // 24
    const bool rope_lane = lane >= kFirstRopeLane;
    const int first_pair = (lane - kFirstRopeLane) * 4;
    const int32_t pos_early =
        t < n_tokens && rope_lane ? early_position(table, positions + t, table_positions, first_pair) : -1;
    if (t < n_tokens && lane == 0) {  // the rest of the token's inputs, also into L2
        dsv4::prefetch_l2_bulk(kv + t * kv_stride_vecs, kHeadVecs * sizeof(Vec16));
        dsv4::prefetch_l2(slot_mapping + t);
    }
    dsv4::await_previous_kernel();
    if (t >= n_tokens) return;  // whole warps
    // Everything a token needs is requested at once (slot, position, row, weights, and the table row of the early
    // position): one memory round trip, and a second for the table only when the position has changed since (with
    // the row warmed in L2 above, V4-Pro on the H100: 64 tokens 1.67 -> 1.40 us, 1 token 1.61 -> 1.29).
    const int32_t slot = __ldg(slot_mapping + t);
    const int32_t pos = __ldg(positions + t);
    const Vec16* row = kv + t * kv_stride_vecs;
    const Vec16 va = __ldg(row + lane), vb = __ldg(row + lane + 32);
    float wa[8], wb[8];
    load_weight8(wa, weight, lane);
    load_weight8(wb, weight, lane + 32);
    CosSin4 cs;
    bool in_table = rope_lane && load_cos_sin4(cs, table, pos_early, table_positions, first_pair);
    if (slot < 0 || slot >= n_slots) return;  // skipped token (whole warp)
    if (rope_lane && pos != pos_early) in_table = load_cos_sin4(cs, table, pos, table_positions, first_pair);
    // The record's addresses as soon as the slot is in, overlapping the sums' shuffles. Against the 64-bit division
    // behind the quantizer they replace (V4-Pro on the H100, the bench's timing, three runs, us at 1 / 64 / 4096
    // tokens): 1.31-1.33 / 1.39-1.44 / 4.11-4.14 -> 1.28-1.29 / 1.30-1.36 / 3.67-3.70; a 32-bit division in the same
    // place, 1.28-1.29 / 1.33-1.36 / 3.81-3.83.
    uint32_t page, in_page;
    pages.split(static_cast<uint32_t>(slot), page, in_page);
    uint8_t* page_base = cache + page * block_stride_bytes;
    uint8_t* scales = page_base + int64_t(pages.block_size) * kKvDataBytes + int64_t(in_page) * kKvScaleBytes;
    uint2* data = reinterpret_cast<uint2*>(page_base + int64_t(in_page) * kKvDataBytes);  // 72 uint2

    float a[8], b[8];
    dsv4::unpack_bf16x8(va, a);
    dsv4::unpack_bf16x8(vb, b);
    // The lane's 16 squares as 4 chains of 4, not one of 16: a shorter path to the stores (measured below).
    float chain[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const float* f = c < 2 ? a + 4 * c : b + 4 * (c - 2);
        chain[c] = fmaf(f[3], f[3], fmaf(f[2], f[2], fmaf(f[1], f[1], f[0] * f[0])));
    }
    const float sum = dsv4::warp_reduce_sum((chain[0] + chain[1]) + (chain[2] + chain[3]));
    static_assert((kHeadDim & (kHeadDim - 1)) == 0, "sum / 512 is the product by 2^-9, exactly");
    const float inv_rms = 1.0f / sqrtf(__fmul_rn(sum, 1.0f / kHeadDim) + eps);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        a[e] = __fmul_rn(wa[e], __fmul_rn(a[e], inv_rms));
        b[e] = __fmul_rn(wb[e], __fmul_rn(b[e], inv_rms));
    }
    // Round to bf16 (kv_norm's output). The quantizer's shuffles come before the rope lanes rotate, so that no lane
    // waits for the table row except those that use it.
    Vec16 ya = dsv4::pack_bf16x8(a), yb = dsv4::pack_bf16x8(b);
    dsv4::unpack_bf16x8(ya, a);
    dsv4::unpack_bf16x8(yb, b);
    const int exp_a = dsv4::group_e4m3_exponent<kKvBlock / 8>(a);
    // exp_b is meaningless in the rope lanes and never stored from there.
    const int exp_b = dsv4::group_e4m3_exponent<kKvBlock / 8>(b);

    // Scale bytes: blocks 0..3 from lanes 0, 8, 16, 24 (first vector), 4..6 from lanes 0, 8, 16 (second vector),
    // and the zero byte 7 from lane 24, each group's first lane storing its own byte. Against lane 0 gathering them
    // by 7 shuffles into one 8-byte store (V4-Pro on the H100, the bench's timing, three runs, with the trees above):
    // 64 tokens 1.41-1.45 -> 1.36-1.41 us, 1 token 1.34 -> 1.26-1.38, 4096 4.13-4.16 -> 4.09-4.13 (the sums' tree
    // alone: 1.39-1.44 at 64 tokens; no arithmetic at all, timing only: 1.29-1.34; wait and exit: 0.87-0.90).
    static_assert(kKvScales == 7 && kKvScaleBytes == 8, "lanes 0, 8, 16, 24 store bytes g and 4 + g");
    if (lane % 8 == 0) {
        scales[lane / 8] = dsv4::e8m0_byte(exp_a);
        scales[4 + lane / 8] = rope_lane ? uint8_t(0) : dsv4::e8m0_byte(exp_b);
    }
    data[lane] = dsv4::e4m3x8(a, exp_a);                                              // bytes [0, 256)
    if (!rope_lane) {
        data[32 + lane] = dsv4::e4m3x8(b, exp_b);  // bytes [256, 448)
    } else {
        rotate4<false>(b, cs, in_table);
        yb = dsv4::pack_bf16x8(b);
        const int word = kNopeDim / 8 + 2 * (lane - kFirstRopeLane);  // bf16 rope bytes [448, 576)
        data[word] = make_uint2(yb.x, yb.y);
        data[word + 1] = make_uint2(yb.z, yb.w);
    }
}

// Blocks of q_norm_rope_kernel the device holds at once (0 when the query fails: no block then warms L2 early).
int64_t q_resident_blocks() {
    static int64_t blocks = -1;  // the device does not change under a loaded library
    if (blocks < 0) {
        int per_sm = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, q_norm_rope_kernel, kHeadsPerBlock * dsv4::kWarpSize,
                                                          0) != cudaSuccess) {
            cudaGetLastError();  // not sticky
            per_sm = 0;
        }
        blocks = int64_t(per_sm) * dsv4::sm_count();
    }
    return blocks;
}

int check_table_positions(int64_t table_positions) {
    DSV4_CHECK_ARG(table_positions > 0 && table_positions <= kMaxTablePositions, DSV4_ERR_SHAPE,
                   "table_positions = %lld is not in [1, 2^24]", (long long)table_positions);
    return DSV4_OK;
}

// A row of heads: the stride (elements) must hold n_heads * 512 and keep rows 16-byte aligned.
int check_head_rows(int64_t n_tokens, int64_t n_heads, int64_t stride, const char* stride_name) {
    DSV4_CHECK_ARG(n_tokens >= 0 && n_tokens <= INT32_MAX, DSV4_ERR_SHAPE, "n_tokens = %lld is not in [0, 2^31)",
                   (long long)n_tokens);
    DSV4_CHECK_ARG(n_heads > 0 && n_heads <= 1024, DSV4_ERR_SHAPE, "n_heads = %lld is not in [1, 1024]",
                   (long long)n_heads);
    DSV4_CHECK_ARG(stride >= n_heads * kHeadDim && stride % kBf16PerVec == 0, DSV4_ERR_STRIDE,
                   "%s = %lld is smaller than n_heads * 512 = %lld or not a multiple of 8", stride_name,
                   (long long)stride, (long long)(n_heads * kHeadDim));
    return DSV4_OK;
}

}  // namespace

DSV4_API size_t dsv4_rope_kv_params_size(void) { return sizeof(dsv4_rope_kv_params); }

DSV4_API int dsv4_rope_table_f32(float* table, const float* freqs, int64_t n_positions, int64_t n_pairs,
                                 cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_ARG(n_positions >= 0 && n_positions <= kMaxTablePositions, DSV4_ERR_SHAPE,
                       "n_positions = %lld is not in [0, 2^24]", (long long)n_positions);
        DSV4_CHECK_ARG(n_pairs > 0 && n_pairs <= 4096, DSV4_ERR_SHAPE, "n_pairs = %lld is not in [1, 4096]",
                       (long long)n_pairs);
        if (n_positions == 0) return DSV4_OK;
        DSV4_CHECK_PTR(table, 8);
        DSV4_CHECK_PTR(freqs, 4);
        const int64_t n = n_positions * n_pairs;
        constexpr int64_t kMaxBlocks = 1 << 16;
        const int64_t blocks = std::min<int64_t>((n + kTableThreads - 1) / kTableThreads, kMaxBlocks);
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, rope_table_kernel,
                                              static_cast<unsigned>(blocks), kTableThreads, 0, stream,
                                              reinterpret_cast<float2*>(table), freqs, n_positions, n_pairs));
        return DSV4_OK;
    });
}

DSV4_API int dsv4_rope_q_norm_rope_bf16(void* q, const int32_t* positions, const float* table, int64_t n_tokens,
                                        int64_t n_heads, int64_t table_positions, int64_t q_stride, float eps,
                                        cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_RETURN_IF_FAILED(check_head_rows(n_tokens, n_heads, q_stride, "q_stride"));
        DSV4_RETURN_IF_FAILED(check_table_positions(table_positions));
        DSV4_CHECK_ARG(eps >= 0.0f && std::isfinite(eps), DSV4_ERR_ARGUMENT, "eps = %g is not finite and >= 0",
                       (double)eps);
        if (n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_PTR(q, 16);
        DSV4_CHECK_PTR(positions, 4);
        DSV4_CHECK_PTR(table, 16);
        const int64_t heads = n_tokens * n_heads;
        const int64_t blocks = (heads + kHeadsPerBlock - 1) / kHeadsPerBlock;
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, q_norm_rope_kernel,
                                              static_cast<unsigned>(blocks), kHeadsPerBlock * dsv4::kWarpSize, 0,
                                              stream, static_cast<Vec16*>(q), positions,
                                              reinterpret_cast<const float2*>(table), heads, n_heads,
                                              q_stride / kBf16PerVec, table_positions, eps,
                                              blocks <= q_resident_blocks()));
        return DSV4_OK;
    });
}

DSV4_API int dsv4_rope_inverse_bf16(void* o, const int32_t* positions, const float* table, int64_t n_tokens,
                                    int64_t n_heads, int64_t table_positions, int64_t o_stride,
                                    cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_RETURN_IF_FAILED(check_head_rows(n_tokens, n_heads, o_stride, "o_stride"));
        DSV4_RETURN_IF_FAILED(check_table_positions(table_positions));
        if (n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_PTR(o, 16);
        DSV4_CHECK_PTR(positions, 4);
        DSV4_CHECK_PTR(table, 16);
        const bool narrow = inverse_narrow(n_tokens, n_heads);
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(
            dsv4::Launch::kOverlapPrevious,
            narrow ? inverse_rope_kernel<kInverseNarrowThreads> : inverse_rope_kernel<kInverseThreads>,
            static_cast<unsigned>(n_tokens), narrow ? kInverseNarrowThreads : kInverseThreads, 0, stream,
            static_cast<Vec16*>(o), positions, reinterpret_cast<const float2*>(table), n_heads,
            o_stride / kBf16PerVec, table_positions));
        return DSV4_OK;
    });
}

DSV4_API int dsv4_rope_kv_fp8(const dsv4_rope_kv_params* params, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_PTR(params, alignof(dsv4_rope_kv_params));
        const dsv4_rope_kv_params& p = *params;
        DSV4_CHECK_ARG(p.n_tokens >= 0 && p.n_tokens <= INT32_MAX, DSV4_ERR_SHAPE,
                       "n_tokens = %lld is not in [0, 2^31)", (long long)p.n_tokens);
        DSV4_CHECK_ARG(p.n_slots >= 0 && p.n_slots <= INT32_MAX, DSV4_ERR_SHAPE, "n_slots = %lld is not in [0, 2^31)",
                       (long long)p.n_slots);
        DSV4_CHECK_ARG(p.block_size > 0 && p.block_size <= INT32_MAX, DSV4_ERR_SHAPE,
                       "block_size = %lld is not in [1, 2^31)", (long long)p.block_size);
        DSV4_CHECK_ARG(p.block_stride_bytes >= p.block_size * kKvRecordBytes && p.block_stride_bytes % 8 == 0,
                       DSV4_ERR_STRIDE, "block_stride_bytes = %lld is smaller than block_size * 584 = %lld or not a "
                       "multiple of 8", (long long)p.block_stride_bytes, (long long)(p.block_size * kKvRecordBytes));
        DSV4_CHECK_ARG(p.kv_stride >= kHeadDim && p.kv_stride % kBf16PerVec == 0, DSV4_ERR_STRIDE,
                       "kv_stride = %lld is smaller than 512 or not a multiple of 8", (long long)p.kv_stride);
        DSV4_RETURN_IF_FAILED(check_table_positions(p.table_positions));
        DSV4_CHECK_ARG(p.eps >= 0.0f && std::isfinite(p.eps), DSV4_ERR_ARGUMENT, "eps = %g is not finite and >= 0",
                       (double)p.eps);
        if (p.n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_FIELD_PTR(p, cache, 8);
        DSV4_CHECK_FIELD_PTR(p, kv, 16);
        DSV4_CHECK_FIELD_PTR(p, weight, 16);
        DSV4_CHECK_FIELD_PTR(p, positions, 4);
        DSV4_CHECK_FIELD_PTR(p, slot_mapping, 4);
        DSV4_CHECK_FIELD_PTR(p, table, 16);
        const int64_t blocks = (p.n_tokens + kKvTokensPerBlock - 1) / kKvTokensPerBlock;
        DSV4_CHECK_LAUNCH(dsv4::launch_kernel(
            dsv4::Launch::kOverlapPrevious, kv_norm_rope_fp8_kernel, static_cast<unsigned>(blocks),
            kKvTokensPerBlock * dsv4::kWarpSize, 0, stream,
            static_cast<uint8_t*>(p.cache), static_cast<const Vec16*>(p.kv), reinterpret_cast<const float4*>(p.weight),
            p.positions, p.slot_mapping, reinterpret_cast<const float2*>(p.table), p.n_tokens, p.n_slots,
            page_divisor(p.block_size), p.block_stride_bytes, p.kv_stride / kBf16PerVec, p.table_positions, p.eps));
        return DSV4_OK;
    });
}
