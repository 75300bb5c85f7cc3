// RMSNorm (SPEC section 4) and FP8 activation quantization (SPEC section 2, `act_quant`), standalone and fused.
//
// Every op here is a row op over bf16 rows of `dim` elements: one thread block per row (for few rows 2 or 4, see
// row_split_kernel), the row held in registers as 16-byte vectors (8 bf16), so each input byte is read once from
// HBM and each output byte written once.
// Thread j of a kThreads-thread block holds vectors j, j + kThreads, ..., so every load and store instruction of
// a warp covers 512 contiguous bytes. A quantization block of 128 (64) elements is 16 (8) consecutive vectors,
// held by 16 (8) consecutive lanes at the same register index: its amax is a shuffle reduction within them.
//
// Numerics (bit-exact against pydsv4/reference where the math allows it):
//  - RMSNorm: mean = fl32(sum(x^2) / dim), inv_rms = 1 / sqrt(mean + eps) with IEEE division and sqrt (no
//    rsqrtf), y = bf16(w * (x * inv_rms)), each product rounded as NumPy does. Only sum(x^2) is summed in a
//    different order than NumPy's pairwise sum, so inv_rms can differ by an fp32 ulp; a bf16 output flips by
//    one bf16 ulp only when its value sits within that distance of a rounding tie (rare).
//  - Quantization: scale = 2^ceil(log2(max(amax, 1e-4) * (1/448))) from the fp32 bits (common.cuh), q =
//    e4m3(clamp(v * 2^-e)) rounded to nearest even. Multiplying by 2^-e is exact (a power of two, e in
//    [-22, 120] for finite bf16 inputs), so q and the scale are exactly quant.act_quant's for the same values.
#include "common.cuh"

#include <algorithm>

namespace {

using dsv4::Vec16;

constexpr int kBf16PerVec = 8;
constexpr int kRmsQuantBlock = 128;  // the fused RMSNorm + FP8 entry quantizes per 128 (SPEC 3: before FP8 linears)

enum class RowOp {
    kRmsNorm,       // y = rms_norm(x, w)
    kRmsNormQuant,  // q, scale = act_quant(rms_norm(x, w), 128); y optional
    kQuant,         // q, scale = act_quant(x, block)
};

struct RowArgs {
    Vec16* y;               // [n_rows, y_stride_vecs] bf16 (8 per vector); NULL: no y (kRmsNormQuant only)
    uint2* q;               // [n_rows, q_stride_vecs] e4m3 (8 per uint2)
    float* scale;           // scale[row * scale_stride_row + block * scale_stride_block], fp32 powers of two
    const Vec16* x;         // [n_rows, x_stride_vecs] bf16
    const float4* weight;   // [dim / 4] fp32 (RMSNorm ops)
    int64_t vecs_per_row;   // dim / 8
    int64_t y_stride_vecs, q_stride_vecs, x_stride_vecs;
    int64_t scale_stride_row, scale_stride_block;
    float dim;              // the row length as float (exact), the divisor of the mean
    float eps;
};

// kThreads * kVecs >= vecs_per_row; kGroupLanes = quantization block / 8.
//
// The RMSNorm ops are persistent: a grid of at most (SMs x resident blocks) walks the rows grid-stride, each
// thread parks its own weights (the same for every row) in shared memory once, and the next row's loads are
// issued before the current row is reduced and stored, so a block keeps two rows of HBM reads in flight and
// never re-reads weights (at V4-Pro width they are 28 KB a row, twice the row itself). The quantizer has no
// weights: one block per row.
// Register budget ~80 per thread (row, prefetched row, the quantizer's temporaries; 64 spills): 3 blocks of 256
// threads per SM, so 6 rows in flight.
template <int kThreads>
constexpr int kMinBlocks = 65536 / (kThreads * 80) > 0 ? 65536 / (kThreads * 80) : 1;

// A block's vectors of a row are [first, end): thread j holds first + j + i * kThreads (first = 0 and end =
// vecs_per_row unless several CTAs split the row; first is then a multiple of the quantization group).
struct RowRange {
    int64_t first, end;
};

template <int kThreads, int kVecs>
__device__ __forceinline__ void load_row(Vec16 (&raw)[kVecs], const RowArgs& args, int64_t row, RowRange range) {
    const Vec16* x = args.x + row * args.x_stride_vecs;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int64_t v = range.first + threadIdx.x + int64_t(i) * kThreads;
        raw[i] = v < range.end ? __ldg(x + v) : make_uint4(0, 0, 0, 0);
    }
}

// Thread tid's weights of vector i at weight_smem[2 * (i * kThreads + tid)] and the next float4: only that thread
// writes and reads them, so no barrier is needed.
template <int kThreads, int kVecs>
__device__ __forceinline__ void stage_weights(float4* weight_smem, const RowArgs& args, RowRange range) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int64_t v = range.first + threadIdx.x + int64_t(i) * kThreads;
        const bool valid = v < range.end;
        weight_smem[2 * (i * kThreads + threadIdx.x)] =
            valid ? __ldg(args.weight + 2 * v) : make_float4(0.f, 0.f, 0.f, 0.f);
        weight_smem[2 * (i * kThreads + threadIdx.x) + 1] =
            valid ? __ldg(args.weight + 2 * v + 1) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

// sum + the squares of the thread's vectors, in order (an fp32 fma chain).
template <int kVecs>
__device__ __forceinline__ float add_squares(const Vec16 (&raw)[kVecs], float sum) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        float f[8];
        dsv4::unpack_bf16x8(raw[i], f);
#pragma unroll
        for (int e = 0; e < 8; ++e) sum = fmaf(f[e], f[e], sum);
    }
    return sum;
}

// The thread's vectors raw of the row's vectors `range`; thread_sumsq: its share of the row's sum of squares (RMSNorm
// ops; every thread of the block adds one, see the kernels).
template <RowOp kOp, int kThreads, int kVecs, int kGroupLanes>
__device__ __forceinline__ void process_row(const Vec16 (&raw)[kVecs], const float4* weight_smem,
                                            const RowArgs& args, int64_t row, RowRange range, float thread_sumsq) {
    constexpr bool kNorm = kOp != RowOp::kQuant;
    const int tid = threadIdx.x;
    float inv_rms = 1.0f;
    if constexpr (kNorm) {
        const float sum = dsv4::block_reduce_sum<kThreads>(thread_sumsq);
        inv_rms = 1.0f / sqrtf(__fdiv_rn(sum, args.dim) + args.eps);
    }

    // In phases over the thread's kVecs vectors, so that their amax shuffle chains (the quantizer's latency) overlap.
    // Against one vector at a time (H100): rms_quant V4-Pro x 64 3.7 -> 3.6 us, V4-Flash x 4096 21.0 -> 20.3 us;
    // act_quant x 4096 18.9 -> 19.4 us (Flash) and 31.7 -> 32.0 us (Pro), kept for one loop.
    Vec16 y[kVecs];  // the values the quantizer sees: bf16, normed for the RMSNorm ops
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int64_t v = range.first + tid + int64_t(i) * kThreads;
        y[i] = raw[i];
        if constexpr (kNorm) {
            float f[8];
            dsv4::unpack_bf16x8(raw[i], f);
            const float4 w0 = weight_smem[2 * (i * kThreads + tid)], w1 = weight_smem[2 * (i * kThreads + tid) + 1];
            const float wf[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
            for (int e = 0; e < 8; ++e) f[e] = __fmul_rn(wf[e], __fmul_rn(f[e], inv_rms));
            y[i] = dsv4::pack_bf16x8(f);
            if (v < range.end && (kOp == RowOp::kRmsNorm || args.y != nullptr))
                args.y[row * args.y_stride_vecs + v] = y[i];
        }
    }
    if constexpr (kOp != RowOp::kRmsNorm) {
        float amax[kVecs];  // dsv4::group_e4m3_exponent's steps, the vectors' chains interleaved
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            float f[8];
            dsv4::unpack_bf16x8(y[i], f);
            amax[i] = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) amax[i] = fmaxf(amax[i], fabsf(f[e]));
        }
#pragma unroll
        for (int offset = kGroupLanes / 2; offset > 0; offset >>= 1)
#pragma unroll
            for (int i = 0; i < kVecs; ++i) amax[i] = fmaxf(amax[i], __shfl_xor_sync(0xFFFFFFFFu, amax[i], offset));
#pragma unroll
        for (int i = 0; i < kVecs; ++i) {
            const int64_t v = range.first + tid + int64_t(i) * kThreads;
            if (v >= range.end) continue;  // uniform over each quantization group of lanes
            const int exponent = dsv4::e4m3_scale_exponent(amax[i]);
            float f[8];
            dsv4::unpack_bf16x8(y[i], f);
            args.q[row * args.q_stride_vecs + v] = dsv4::e4m3x8(f, exponent);
            if (tid % kGroupLanes == 0)
                args.scale[row * args.scale_stride_row + (v / kGroupLanes) * args.scale_stride_block] =
                    dsv4::exp2_int(exponent);
        }
    }
}

// Before the wait on the previous kernel (which may still be writing x), thread 0 warms L2 with the vectors `row_range`
// of the row and, for the RMSNorm ops, the weights of `weight_range`, so that the loads after the wait hit L2. Against
// no warming (H100, the bench's timing, two runs, us at 1 / 64 / 1024 / 4096 tokens), V4-Pro: rms 1.53-1.55 / 2.68-
// 2.71 / 11.9-12.0 / 44.2 -> 1.43 / 2.25 / 10.9-11.0 / 43.4; rms_quant 1.71-1.72 / 2.69 / 11.4 / 34.2-34.3 -> 1.62 /
// 2.16-2.17 / 9.6-9.7 / 32.0; act_quant /128 1.07-1.08 / 2.03 / 9.2-9.3 / 30.9 -> 1.00-1.04 / 1.45-1.47 / 8.3 / 29.9
// (V4-Flash alike: rms_quant 1.55 / 2.16-2.17 / 6.8 / 19.8 -> 1.46-1.53 / 1.69 / 6.4-6.5 / 18.6-18.7).
template <bool kNorm>
__device__ __forceinline__ void prefetch_row(const RowArgs& args, int64_t row, RowRange row_range,
                                             RowRange weight_range) {
    if (threadIdx.x != 0) return;
    dsv4::prefetch_l2_bulk(args.x + row * args.x_stride_vecs + row_range.first,
                           static_cast<uint32_t>((row_range.end - row_range.first) * sizeof(Vec16)));
    if (kNorm)
        dsv4::prefetch_l2_bulk(args.weight + 2 * weight_range.first,
                               static_cast<uint32_t>((weight_range.end - weight_range.first) * 2 * sizeof(float4)));
}

template <RowOp kOp, int kThreads, int kVecs, int kGroupLanes>
__global__ void __launch_bounds__(kThreads, kMinBlocks<kThreads>) row_kernel(const RowArgs args, int64_t n_rows) {
    constexpr bool kNorm = kOp != RowOp::kQuant;
    const RowRange range{0, args.vecs_per_row};
    prefetch_row<kNorm>(args, blockIdx.x, range, range);  // the block's first row
    dsv4::await_previous_kernel();
    // [kVecs * kThreads * 2] float4: thread tid's weights of vector i at 2 * (i * kThreads + tid); only that
    // thread writes and reads them, so no barrier is needed.
    extern __shared__ float4 weight_smem[];
    Vec16 raw[kVecs];
    int64_t row = blockIdx.x;
    load_row<kThreads, kVecs>(raw, args, row, range);
    if constexpr (kNorm) stage_weights<kThreads, kVecs>(weight_smem, args, range);
    for (;;) {
        const int64_t next = row + gridDim.x;
        Vec16 prefetched[kVecs];
        if (next < n_rows) load_row<kThreads, kVecs>(prefetched, args, next, range);
        process_row<kOp, kThreads, kVecs, kGroupLanes>(raw, weight_smem, args, row, range,
                                                       kNorm ? add_squares(raw, 0.0f) : 0.0f);
        if (next >= n_rows) break;
        row = next;
#pragma unroll
        for (int i = 0; i < kVecs; ++i) raw[i] = prefetched[i];
    }
}

// Few rows (at most a quarter / half of the SMs): kSplit CTAs per row, so that more SMs stream it and each does
// 1 / kSplit of its arithmetic; CTA r normalizes / quantizes vectors [r * part_vecs, (r + 1) * part_vecs). For the
// RMSNorm ops every CTA also reads the other parts (L2 mostly: its partners read them at the same time) and forms
// the whole row's sum of squares itself, thread j over vectors j + i * kThreads of each part in part order: the same
// operations in every CTA, so the same inv_rms bits, with no exchange between the CTAs. Grid: n_rows * kSplit blocks.
template <RowOp kOp, int kThreads, int kVecs, int kGroupLanes, int kSplit>
__global__ void __launch_bounds__(kThreads) row_split_kernel(const RowArgs args, int64_t part_vecs) {
    constexpr bool kNorm = kOp != RowOp::kQuant;
    __shared__ float4 weight_smem[kNorm ? 2 * kVecs * kThreads : 1];
    const int64_t row = blockIdx.x / kSplit;
    const int rank = blockIdx.x % kSplit;
    auto part = [&](int p) { return RowRange{p * part_vecs, min((p + 1) * part_vecs, args.vecs_per_row)}; };
    const RowRange range = part(rank);
    prefetch_row<kNorm>(args, row, kNorm ? RowRange{0, args.vecs_per_row} : range, range);  // (norms read every part)
    dsv4::await_previous_kernel();
    Vec16 raw[kVecs];
    float sumsq = 0.0f;
    if constexpr (kNorm) {
        Vec16 parts[kSplit][kVecs];
#pragma unroll
        for (int p = 0; p < kSplit; ++p) load_row<kThreads, kVecs>(parts[p], args, row, part(p));
        stage_weights<kThreads, kVecs>(weight_smem, args, range);
#pragma unroll
        for (int p = 0; p < kSplit; ++p) {
            sumsq = add_squares(parts[p], sumsq);
#pragma unroll
            for (int i = 0; i < kVecs; ++i)
                if (p == rank) raw[i] = parts[p][i];
        }
    } else {
        load_row<kThreads, kVecs>(raw, args, row, range);
    }
    process_row<kOp, kThreads, kVecs, kGroupLanes>(raw, weight_smem, args, row, range, sumsq);
}

// Resident blocks of one row_kernel instantiation per SM times the SMs: the persistent grid of the norm ops.
template <RowOp kOp, int kThreads, int kVecs, int kGroupLanes>
int64_t persistent_blocks(size_t smem_bytes) {
    static int64_t blocks = 0;  // per instantiation; the device does not change under a loaded library
    if (blocks == 0) {
        const int sms = dsv4::sm_count();
        int per_sm = 0;
        if (sms <= 0 ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, row_kernel<kOp, kThreads, kVecs, kGroupLanes>,
                                                          kThreads, smem_bytes) != cudaSuccess ||
            per_sm <= 0) {
            cudaGetLastError();  // a query failure is not sticky; fall back to one block per row
            return INT64_MAX;
        }
        blocks = int64_t(sms) * per_sm;
    }
    return blocks;
}

template <RowOp kOp, int kThreads, int kVecs, int kGroupLanes>
cudaError_t launch_config(const RowArgs& args, int64_t n_rows, cudaStream_t stream) {
    constexpr bool kNorm = kOp != RowOp::kQuant;
    const size_t smem = kNorm ? size_t(kVecs) * kThreads * 2 * sizeof(float4) : 0;
    const int64_t grid = kNorm ? std::min(n_rows, persistent_blocks<kOp, kThreads, kVecs, kGroupLanes>(smem)) : n_rows;
    return dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, row_kernel<kOp, kThreads, kVecs, kGroupLanes>,
                               static_cast<unsigned>(grid), kThreads, smem, stream, args, n_rows);
}

// Each row's CTAs hold whole quantization groups: the part of a row (vectors) one of kSplit CTAs takes.
template <int kGroupLanes, int kSplit>
int64_t split_part_vecs(int64_t vecs_per_row) {
    const int64_t groups = (vecs_per_row + kGroupLanes - 1) / kGroupLanes;
    return (groups + kSplit - 1) / kSplit * kGroupLanes;
}

// row_split_kernel over kSplit CTAs per row, configured like launch_rows below for a part of the row; parts wider
// than 512 vectors are not a small-batch shape of V4 and are not split (split_part_vecs <= 512 is checked first).
template <RowOp kOp, int kGroupLanes, int kSplit>
cudaError_t launch_split(const RowArgs& args, int64_t n_rows, cudaStream_t stream) {
    const int64_t part = split_part_vecs<kGroupLanes, kSplit>(args.vecs_per_row);
    const unsigned grid = static_cast<unsigned>(n_rows * kSplit);
    constexpr auto kOverlap = dsv4::Launch::kOverlapPrevious;
    if (part <= 64)
        return dsv4::launch_kernel(kOverlap, row_split_kernel<kOp, 64, 1, kGroupLanes, kSplit>, grid, 64, 0, stream,
                                   args, part);
    if (part <= 128)
        return dsv4::launch_kernel(kOverlap, row_split_kernel<kOp, 128, 1, kGroupLanes, kSplit>, grid, 128, 0, stream,
                                   args, part);
    if (part <= 256)
        return dsv4::launch_kernel(kOverlap, row_split_kernel<kOp, 256, 1, kGroupLanes, kSplit>, grid, 256, 0, stream,
                                   args, part);
    return dsv4::launch_kernel(kOverlap, row_split_kernel<kOp, 256, 2, kGroupLanes, kSplit>, grid, 256, 0, stream, args,
                               part);
}

template <RowOp kOp, int kGroupLanes>
int launch_rows(const RowArgs& args, int64_t n_rows, cudaStream_t stream) {
    // Few rows: split each over 4 CTAs, or 2 for the quantizing ops, while the split rows fit the SMs in one wave.
    // V4-Pro on the H100 (us, unsplit -> split): 1 token rms 2.4 -> 2.1, rms_quant 3.2 -> 2.3, act_quant 2.0 -> 1.5;
    // 64 tokens (split in 2) rms_quant 3.9 -> 3.7, act_quant 2.9 -> 2.7, but rms 3.3 -> 3.4 (measured with the split
    // CTAs as a cluster adding their sums of squares over distributed shared memory; independent CTAs each reading
    // the whole row for its sum, as now, against that: rms_quant 64 tokens 2.92 -> 2.72, 1 token 2.05 -> 1.79, rms 1
    // token 1.91 -> 1.52, act_quant 1 token 1.33 -> 1.05, the cluster launch itself costing the quantizer ~0.3 us).
    const int64_t sms = dsv4::sm_count();
    if (n_rows * 4 <= sms && split_part_vecs<kGroupLanes, 4>(args.vecs_per_row) <= 512) {
        DSV4_CHECK_LAUNCH(launch_split<kOp, kGroupLanes, 4>(args, n_rows, stream));
        return DSV4_OK;
    }
    if (kOp != RowOp::kRmsNorm && n_rows * 2 <= sms && split_part_vecs<kGroupLanes, 2>(args.vecs_per_row) <= 512) {
        DSV4_CHECK_LAUNCH(launch_split<kOp, kGroupLanes, 2>(args, n_rows, stream));
        return DSV4_OK;
    }
    // The smallest configuration that holds the row with few idle threads and at most 4 vectors per thread:
    // dim <= 16384 for the RMSNorm ops (V4 needs 7168; their weights, 32 bytes a vector, stay within the 48 KB
    // of shared memory a block gets without opting in up to dim 12288, and 16384 needs 64 KB: see below),
    // 32768 for the quantizer (V4-Pro's widest activation is wo_b's 16384).
    const int64_t vecs = args.vecs_per_row;
    if (vecs <= 64) DSV4_CHECK_LAUNCH(launch_config<kOp, 64, 1, kGroupLanes>(args, n_rows, stream));
    else if (vecs <= 128) DSV4_CHECK_LAUNCH(launch_config<kOp, 128, 1, kGroupLanes>(args, n_rows, stream));
    else if (vecs <= 256) DSV4_CHECK_LAUNCH(launch_config<kOp, 256, 1, kGroupLanes>(args, n_rows, stream));
    else if (vecs <= 512) DSV4_CHECK_LAUNCH(launch_config<kOp, 256, 2, kGroupLanes>(args, n_rows, stream));
    else if (vecs <= 1024) DSV4_CHECK_LAUNCH(launch_config<kOp, 256, 4, kGroupLanes>(args, n_rows, stream));
    else if (vecs <= 2048) {
        if constexpr (kOp != RowOp::kQuant) {  // 64 KB of weights: opt in above the default 48 KB
            DSV4_CHECK_CUDA(cudaFuncSetAttribute(row_kernel<kOp, 512, 4, kGroupLanes>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
        }
        DSV4_CHECK_LAUNCH(launch_config<kOp, 512, 4, kGroupLanes>(args, n_rows, stream));
    } else if constexpr (kOp == RowOp::kQuant) {
        DSV4_CHECK_LAUNCH(launch_config<kOp, 1024, 4, kGroupLanes>(args, n_rows, stream));
    } else {
        return dsv4::fail(DSV4_ERR_INTERNAL, "no launch configuration for rows of %lld vectors", (long long)vecs);
    }
    return DSV4_OK;
}

constexpr int64_t kMaxNormDim = 512 * 4 * kBf16PerVec;    // 16384
constexpr int64_t kMaxQuantDim = 1024 * 4 * kBf16PerVec;  // 32768

// Checks shared by the entries: sizes, then (after the caller's empty-work return) pointers and strides.
int check_rows(int64_t n_rows, int64_t dim, int64_t dim_multiple, int64_t max_dim) {
    DSV4_CHECK_ARG(n_rows >= 0 && n_rows <= INT32_MAX, DSV4_ERR_SHAPE, "n_tokens = %lld is not in [0, 2^31)",
                   (long long)n_rows);
    DSV4_CHECK_ARG(dim > 0 && dim % dim_multiple == 0 && dim <= max_dim, DSV4_ERR_SHAPE,
                   "dim = %lld is not a positive multiple of %lld at most %lld", (long long)dim,
                   (long long)dim_multiple, (long long)max_dim);
    return DSV4_OK;
}

int check_row_stride(int64_t stride, int64_t dim, int64_t multiple, const char* name) {
    if (stride < dim || stride % multiple != 0)
        return dsv4::fail(DSV4_ERR_STRIDE, "%s = %lld is smaller than dim = %lld or not a multiple of %lld", name,
                          (long long)stride, (long long)dim, (long long)multiple);
    return DSV4_OK;
}

}  // namespace

DSV4_API size_t dsv4_norm_rms_quant_params_size(void) { return sizeof(dsv4_norm_rms_quant_params); }
DSV4_API size_t dsv4_norm_act_quant_params_size(void) { return sizeof(dsv4_norm_act_quant_params); }

DSV4_API int dsv4_norm_rms_bf16(void* y, const void* x, const float* weight, int64_t n_tokens, int64_t dim,
                                int64_t y_stride, int64_t x_stride, float eps, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_RETURN_IF_FAILED(check_rows(n_tokens, dim, kBf16PerVec, kMaxNormDim));
        DSV4_CHECK_ARG(eps >= 0.0f && std::isfinite(eps), DSV4_ERR_ARGUMENT, "eps = %g is not finite and >= 0",
                       (double)eps);
        DSV4_RETURN_IF_FAILED(check_row_stride(y_stride, dim, kBf16PerVec, "y_stride"));
        DSV4_RETURN_IF_FAILED(check_row_stride(x_stride, dim, kBf16PerVec, "x_stride"));
        if (n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_PTR(y, 16);
        DSV4_CHECK_PTR(x, 16);
        DSV4_CHECK_PTR(weight, 16);
        RowArgs args{};
        args.y = static_cast<Vec16*>(y);
        args.x = static_cast<const Vec16*>(x);
        args.weight = reinterpret_cast<const float4*>(weight);
        args.vecs_per_row = dim / kBf16PerVec;
        args.y_stride_vecs = y_stride / kBf16PerVec;
        args.x_stride_vecs = x_stride / kBf16PerVec;
        args.dim = static_cast<float>(dim);
        args.eps = eps;
        return launch_rows<RowOp::kRmsNorm, 1>(args, n_tokens, stream);
    });
}

DSV4_API int dsv4_norm_rms_quant_e4m3(const dsv4_norm_rms_quant_params* params, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_PTR(params, alignof(dsv4_norm_rms_quant_params));
        const dsv4_norm_rms_quant_params& p = *params;
        DSV4_RETURN_IF_FAILED(check_rows(p.n_tokens, p.dim, kRmsQuantBlock, kMaxNormDim));
        DSV4_CHECK_ARG(p.eps >= 0.0f && std::isfinite(p.eps), DSV4_ERR_ARGUMENT, "eps = %g is not finite and >= 0",
                       (double)p.eps);
        DSV4_RETURN_IF_FAILED(check_row_stride(p.x_stride, p.dim, kBf16PerVec, "x_stride"));
        DSV4_RETURN_IF_FAILED(check_row_stride(p.q_stride, p.dim, 8, "q_stride"));
        if (p.y != nullptr) DSV4_RETURN_IF_FAILED(check_row_stride(p.y_stride, p.dim, kBf16PerVec, "y_stride"));
        DSV4_RETURN_IF_FAILED(dsv4::check_scale_strides(p.n_tokens, p.dim / kRmsQuantBlock, p.scale_stride_token,
                                             p.scale_stride_block));
        if (p.n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_FIELD_PTR(p, q, 8);
        DSV4_CHECK_FIELD_PTR(p, scale, 4);
        if (p.y != nullptr) DSV4_CHECK_FIELD_PTR(p, y, 16);
        DSV4_CHECK_FIELD_PTR(p, x, 16);
        DSV4_CHECK_FIELD_PTR(p, weight, 16);
        RowArgs args{};
        args.y = static_cast<Vec16*>(p.y);
        args.q = static_cast<uint2*>(p.q);
        args.scale = p.scale;
        args.x = static_cast<const Vec16*>(p.x);
        args.weight = reinterpret_cast<const float4*>(p.weight);
        args.vecs_per_row = p.dim / kBf16PerVec;
        args.y_stride_vecs = p.y_stride / kBf16PerVec;
        args.q_stride_vecs = p.q_stride / 8;
        args.x_stride_vecs = p.x_stride / kBf16PerVec;
        args.scale_stride_row = p.scale_stride_token;
        args.scale_stride_block = p.scale_stride_block;
        args.dim = static_cast<float>(p.dim);
        args.eps = p.eps;
        return launch_rows<RowOp::kRmsNormQuant, kRmsQuantBlock / kBf16PerVec>(args, p.n_tokens, stream);
    });
}

DSV4_API int dsv4_norm_act_quant_e4m3(const dsv4_norm_act_quant_params* params, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_PTR(params, alignof(dsv4_norm_act_quant_params));
        const dsv4_norm_act_quant_params& p = *params;
        DSV4_CHECK_ARG(p.block == 64 || p.block == 128, DSV4_ERR_ARGUMENT, "block = %lld is not 64 or 128",
                       (long long)p.block);
        DSV4_RETURN_IF_FAILED(check_rows(p.n_tokens, p.dim, p.block, kMaxQuantDim));
        DSV4_RETURN_IF_FAILED(check_row_stride(p.x_stride, p.dim, kBf16PerVec, "x_stride"));
        DSV4_RETURN_IF_FAILED(check_row_stride(p.q_stride, p.dim, 8, "q_stride"));
        DSV4_RETURN_IF_FAILED(dsv4::check_scale_strides(p.n_tokens, p.dim / p.block, p.scale_stride_token,
                                             p.scale_stride_block));
        if (p.n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_FIELD_PTR(p, q, 8);
        DSV4_CHECK_FIELD_PTR(p, scale, 4);
        DSV4_CHECK_FIELD_PTR(p, x, 16);
        RowArgs args{};
        args.q = static_cast<uint2*>(p.q);
        args.scale = p.scale;
        args.x = static_cast<const Vec16*>(p.x);
        args.vecs_per_row = p.dim / kBf16PerVec;
        args.q_stride_vecs = p.q_stride / 8;
        args.x_stride_vecs = p.x_stride / kBf16PerVec;
        args.scale_stride_row = p.scale_stride_token;
        args.scale_stride_block = p.scale_stride_block;
        return p.block == 128 ? launch_rows<RowOp::kQuant, 128 / kBf16PerVec>(args, p.n_tokens, stream)
                              : launch_rows<RowOp::kQuant, 64 / kBf16PerVec>(args, p.n_tokens, stream);
    });
}
