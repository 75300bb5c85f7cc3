// Shared by every kernel family: the entry-boundary machinery (status codes, argument checks, last-error
// message, NVTX range, exception guard) and small device helpers (bf16/fp8/e8m0 conversions, 16-byte vectors,
// warp and block reductions).
//
// Include exactly once per family, from cuda/<family>.cu (one translation unit per .so): it defines that
// library's dsv4_last_error(). An entry looks like
//
//   DSV4_API int dsv4_fam_op_bf16(void* out, const void* in, int64_t n, int64_t dim, cudaStream_t stream) {
//       return dsv4::guarded(__func__, [&] {
//           DSV4_CHECK_ARG(n >= 0, DSV4_ERR_SHAPE, "n = %lld is negative", (long long)n);
//           if (n == 0) return DSV4_OK;                      // empty work: no launch, pointers may be NULL
//           DSV4_CHECK_PTR(out, 16);
//           DSV4_CHECK_PTR(in, 16);
//           DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, op_kernel, grid, block, 0,
//                                                 stream, ...));
//           return DSV4_OK;
//       });
//   }
//
// and every kernel begins with dsv4::await_previous_kernel() (programmatic dependent launch, below).
//
// Order of checks: scalars and sizes, then the early return for empty work, then pointers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <utility>

#include "dsv4.h"

#define DSV4_API extern "C" __attribute__((visibility("default")))

namespace dsv4 {

// ---- entry boundary ---------------------------------------------------------------------------------------------

constexpr int kLastErrorBytes = 1024;
inline thread_local char g_last_error[kLastErrorBytes] = "";
// Name of the entry running on this thread, so checks inside helpers can name it; set by guarded().
inline thread_local const char* g_current_entry = "dsv4";

__attribute__((format(printf, 2, 3))) inline int fail(int status, const char* fmt, ...) {
    int used = snprintf(g_last_error, kLastErrorBytes, "%s: ", g_current_entry);
    if (used < 0 || used >= kLastErrorBytes) return status;
    va_list args;
    va_start(args, fmt);
    vsnprintf(g_last_error + used, kLastErrorBytes - used, fmt, args);
    va_end(args);
    return status;
}

// RAII NVTX range named after the entry, so a profile maps 1:1 onto the C API.
struct NvtxRange {
    explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
    NvtxRange(const NvtxRange&) = delete;
    NvtxRange& operator=(const NvtxRange&) = delete;
};

// Runs an entry's body: names it for fail(), opens its NVTX range, and turns any C++ exception into
// DSV4_ERR_INTERNAL so nothing is thrown across the C boundary.
template <typename Body>
int guarded(const char* entry, Body&& body) noexcept {
    g_current_entry = entry;
    try {
        NvtxRange range(entry);
        return body();
    } catch (const std::exception& e) {
        return fail(DSV4_ERR_INTERNAL, "C++ exception: %s", e.what());
    } catch (...) {
        return fail(DSV4_ERR_INTERNAL, "unknown C++ exception");
    }
}

inline bool is_aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

inline int check_ptr(const void* ptr, const char* name, size_t align_bytes) {
    if (ptr == nullptr) return fail(DSV4_ERR_NULL_POINTER, "%s is NULL", name);
    if (!is_aligned(ptr, align_bytes))
        return fail(DSV4_ERR_ALIGNMENT, "%s = %p is not %zu-byte aligned", name, ptr, align_bytes);
    return DSV4_OK;
}

inline int check_cuda(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return DSV4_OK;
    return fail(static_cast<int>(err), "%s: %s (%s)", what, cudaGetErrorName(err), cudaGetErrorString(err));
}

// SMs the kernels size their grids for: DSV4_SM_COUNT in the environment when it is a positive integer (read once per
// process: for MPS or green contexts, which give the process fewer SMs than the device reports), else the current
// device's; 0 if the query fails (callers then size grids without it).
inline int sm_count() {
    static int sms = 0;  // the device does not change under a loaded library
    if (sms == 0) {
        const char* value = std::getenv("DSV4_SM_COUNT");
        char* end = nullptr;
        const long given = value != nullptr ? std::strtol(value, &end, 10) : 0;
        int device = 0;
        if (value != nullptr && end != value && *end == '\0' && given > 0 && given <= INT32_MAX) {
            sms = static_cast<int>(given);
        } else if (cudaGetDevice(&device) != cudaSuccess ||
                   cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
            cudaGetLastError();  // a query failure is not sticky
            sms = 0;
        }
    }
    return sms;
}

// ---- programmatic dependent launch (PDL) ----
// Every kernel is launched with programmatic stream serialization: its CTAs may be scheduled while the kernel
// before it on the stream is still running, so the launch latency and CTA setup (the floor of a decode-sized
// kernel, ~1-2 us) overlap that kernel instead of following it. Correctness rests on every kernel calling
// await_previous_kernel() (device helpers below) before its first global load or store (L2 prefetches aside).
// DSV4_PDL=0 in the environment (read once per process) launches plainly, for profiling a kernel on its own or ruling
// PDL out.
inline bool programmatic_launch_enabled() {
    static const bool enabled = [] {
        const char* value = std::getenv("DSV4_PDL");
        return value == nullptr || std::strcmp(value, "0") != 0;
    }();
    return enabled;
}

// How a kernel's CTAs may start relative to the previous kernel on the stream.
enum class Launch {
    kOverlapPrevious,  // programmatic: scheduled while the previous kernel runs, held at await_previous_kernel()
    // plain: scheduled once it has completed. For grids sized to one even wave of long CTAs: overlapped, CTAs would
    // pile onto the SMs the previous kernel frees first and the busiest SM would set the time.
    kAfterPrevious,
    // programmatic as kOverlapPrevious, and cooperative: every CTA resident at once, for kernels whose CTAs wait on
    // one another. A grid the device cannot hold at once (fewer SMs than sm_count() assumed: MPS, green contexts, a
    // wrong DSV4_SM_COUNT) is refused with cudaErrorCooperativeLaunchTooLarge instead of hanging.
    kCoResident,
};

template <typename... Params, typename... Args>
cudaError_t launch_kernel(Launch mode, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
    cudaLaunchAttribute attributes[2];
    unsigned count = 0;
    if (mode != Launch::kAfterPrevious && programmatic_launch_enabled()) {
        attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attributes[count++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (mode == Launch::kCoResident) {
        attributes[count].id = cudaLaunchAttributeCooperative;
        attributes[count++].val.cooperative = 1;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    config.attrs = attributes;
    config.numAttrs = count;
    return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace dsv4

// Inside guarded(): return `code` with a message unless `cond` holds.
#define DSV4_CHECK_ARG(cond, code, ...)                       \
    do {                                                      \
        if (!(cond)) return ::dsv4::fail((code), __VA_ARGS__); \
    } while (0)

// Inside guarded(): `ptr` must be non-NULL and `align_bytes`-aligned; the message names the argument.
#define DSV4_CHECK_PTR(ptr, align_bytes)                                                 \
    do {                                                                                 \
        if (int status_ = ::dsv4::check_ptr((ptr), #ptr, (align_bytes))) return status_; \
    } while (0)

// Inside guarded(): a CUDA runtime call (e.g. cudaFuncSetAttribute) must succeed.
#define DSV4_CHECK_CUDA(call)                                              \
    do {                                                                   \
        if (int status_ = ::dsv4::check_cuda((call), #call)) return status_; \
    } while (0)

// Inside guarded(): a dsv4::launch_kernel(...) call; a bad configuration or a sticky earlier error is reported.
// (Variadic so that template arguments' commas need no parentheses.)
#define DSV4_CHECK_LAUNCH(...)                                                          \
    do {                                                                                \
        if (int status_ = ::dsv4::check_cuda((__VA_ARGS__), "launch")) return status_; \
    } while (0)

// Inside guarded(): propagate a non-zero status of a check helper.
#define DSV4_RETURN_IF_FAILED(call)               \
    do {                                          \
        if (int status_ = (call)) return status_; \
    } while (0)

// DSV4_CHECK_PTR for a field of a params struct, named in the message by the field alone.
#define DSV4_CHECK_FIELD_PTR(params, field, align_bytes) \
    DSV4_RETURN_IF_FAILED(::dsv4::check_ptr((params).field, #field, (align_bytes)))

namespace dsv4 {

// An epsilon argument must be finite and >= 0.
inline int check_eps(float value, const char* name) {
    if (!(value >= 0.0f && std::isfinite(value)))
        return fail(DSV4_ERR_ARGUMENT, "%s = %g is not finite and >= 0", name, (double)value);
    return DSV4_OK;
}

// FP8 activation scales of (token, block) live at token * stride_token + block * stride_block: row-major
// ([n, n_blocks]) or transposed ([n_blocks, >= n], the layout a GEMM reading scales per block column wants).
// Distinct (token, block) pairs must land on distinct floats.
inline int check_scale_strides(int64_t n_tokens, int64_t n_blocks, int64_t stride_token, int64_t stride_block) {
    const bool row_major = stride_block >= 1 && (n_tokens == 1 || stride_token >= n_blocks * stride_block);
    const bool transposed = stride_token >= 1 && (n_blocks == 1 || stride_block >= n_tokens * stride_token);
    if (!row_major && !transposed)
        return fail(DSV4_ERR_STRIDE,
                    "scale strides (token %lld, block %lld) overlap for %lld tokens of %lld blocks: need "
                    "stride_token >= n_blocks * stride_block or stride_block >= n_tokens * stride_token",
                    (long long)stride_token, (long long)stride_block, (long long)n_tokens, (long long)n_blocks);
    return DSV4_OK;
}

}  // namespace dsv4

DSV4_API const char* dsv4_last_error(void) { return dsv4::g_last_error; }

namespace dsv4 {

// ---- device helpers -------------------------------------------------------------------------------------------

constexpr int kWarpSize = 32;
constexpr float kE4m3Max = 448.0f;  // largest finite e4m3fn
constexpr float kE2m1Max = 6.0f;    // largest e2m1

// 16 bytes moved by one ld.global.v4 / st.global.v4: 8 bf16, 16 fp8, 4 fp32.
using Vec16 = uint4;

__device__ __forceinline__ float bf16_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 float_to_bf16(float x) { return __float2bfloat16_rn(x); }

// The 8 bf16 of a Vec16 <-> 8 floats, element i at the lower address first.
// bf16 -> fp32 is exact: the bf16 bits are the fp32's top half. A word's low element is a shift, its high one a mask:
// one instruction each (__bfloat1622float2 takes a PRMT and a shift for the high one).
__device__ __forceinline__ void unpack_bf16x8(const Vec16& v, float (&out)[8]) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
    }
}

__device__ __forceinline__ Vec16 pack_bf16x8(const float (&in)[8]) {
    Vec16 v;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) pairs[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
    return v;
}

__device__ __forceinline__ float e4m3_to_float(uint8_t byte) {
    __nv_fp8_e4m3 v;
    v.__x = byte;
    return static_cast<float>(v);
}

// Power-of-two scale as the official ue8m0 quantizers compute it: 2^ceil(log2(x)) taken from the fp32 bits
// (exponent, plus one when the mantissa is non-zero), for x = amax / qmax with amax already clamped to a
// positive normal value. Returns the unbiased exponent e, so scale = 2^e and the e8m0 byte is e + 127.
__device__ __forceinline__ int ceil_log2_exponent(float x) {
    uint32_t bits = __float_as_uint(x);
    int exponent = static_cast<int>((bits >> 23) & 0xFFu) - 127;
    return exponent + ((bits & 0x7FFFFFu) != 0u ? 1 : 0);
}

// 2^e for e in [-126, 127] (fp32 normal range), built from the exponent bits.
__device__ __forceinline__ float exp2_int(int e) { return __uint_as_float(static_cast<uint32_t>(e + 127) << 23); }
__device__ __forceinline__ uint8_t e8m0_byte(int e) { return static_cast<uint8_t>(e + 127); }
// e8m0 byte -> 2^(byte - 127); byte 0 is 2^-127 (an fp32 subnormal), byte 0xFF is NaN.
__device__ __forceinline__ float e8m0_to_float(uint8_t byte) {
    if (byte == 0xFFu) return __uint_as_float(0x7FC00000u);
    return byte == 0 ? __uint_as_float(0x00400000u) : __uint_as_float(static_cast<uint32_t>(byte) << 23);
}

// FP8 (act_quant) block scale exponent: amax clamped to >= 1e-4, scale = 2^ceil(log2(amax / 448)).
__device__ __forceinline__ int e4m3_scale_exponent(float amax) {
    return ceil_log2_exponent(fmaxf(amax, 1e-4f) * (1.0f / kE4m3Max));
}

// FP4 (fp4_quant) block scale exponent: amax clamped to >= 6 * 2^-126, scale = 2^ceil(log2(amax / 6)).
__device__ __forceinline__ int e2m1_scale_exponent(float amax) {
    return ceil_log2_exponent(fmaxf(amax, kE2m1Max * 0x1p-126f) * (1.0f / kE2m1Max));
}

// FP8 quantization of one act_quant block held by kGroupLanes consecutive lanes, 8 values each (block = 8 *
// kGroupLanes): the block's amax by shuffles within the group -> its scale exponent, the same in every lane of the
// group. Every lane of the warp must call it (full-mask shuffles).
template <int kGroupLanes>
__device__ __forceinline__ int group_e4m3_exponent(const float (&v)[8]) {
    static_assert(kGroupLanes >= 1 && kGroupLanes <= kWarpSize && (kGroupLanes & (kGroupLanes - 1)) == 0,
                  "a quantization group is a power-of-two number of lanes of one warp");
    // A tree, not a chain of 8 (max is exact in any order; |v| is never -0).
    float amax = fmaxf(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))),
                       fmaxf(fmaxf(fabsf(v[4]), fabsf(v[5])), fmaxf(fabsf(v[6]), fabsf(v[7]))));
#pragma unroll
    for (int offset = kGroupLanes / 2; offset > 0; offset >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
    return e4m3_scale_exponent(amax);
}

// e4m3fn bytes of v / 2^exponent (exact: a power of two), element i in byte i (the lower address first): round to
// nearest even, saturating to +-448 (NaN stays NaN).
__device__ __forceinline__ uint2 e4m3x8(const float (&v)[8], int exponent) {
    const float inv_scale = exp2_int(-exponent);
    uint32_t pair[4];  // elements 2i (low byte) and 2i + 1: one conversion per pair (its first operand goes high)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint16_t bytes;
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;"
            : "=h"(bytes)
            : "f"(v[2 * i + 1] * inv_scale), "f"(v[2 * i] * inv_scale));
        pair[i] = bytes;
    }
    return make_uint2(pair[0] | pair[1] << 16, pair[2] | pair[3] << 16);
}

// First statement of every kernel (launch_kernel above): returns once the previous kernel on the stream has
// completed and its writes are visible (at once when it was not launched programmatically), then lets the next
// kernel's CTAs be scheduled. Before it a kernel may touch registers and shared memory only: no global load (the
// previous kernel may still be writing it) and no global store (it may still be reading it).
__device__ __forceinline__ void await_previous_kernel() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// await_previous_kernel() in two halves, for a kernel that lets the next one in later (at the latest, each CTA's exit
// does): the next kernel's CTAs warm L2 with their own inputs, which can evict what this kernel still re-reads.
__device__ __forceinline__ void wait_previous_kernel() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void allow_next_kernel() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// The 32-bit shared-window address of p (a generic pointer into this CTA's shared memory), for inline PTX.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The one exception to the rule above: before await_previous_kernel() a kernel may warm L2 for loads it makes after
// it. L2 is the device's point of coherence, so a prefetch into it never makes a later load stale, whatever the
// previous kernel writes there meanwhile.
__device__ __forceinline__ void prefetch_l2(const void* ptr) { asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr)); }

// The same for a contiguous range: `bytes` from `ptr` (both multiples of 16), one bulk request to the TMA unit. For
// small grids, whose CTAs all start while the previous kernel runs, this takes their inputs' DRAM latency off the
// critical path (V4-Pro x 64 tokens, H100: hc_pre from partials 5.87 -> 4.87 us, post_mix 7.41 -> 6.75 us).
__device__ __forceinline__ void prefetch_l2_bulk(const void* ptr, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(ptr), "r"(bytes) : "memory");
}

// An int the previous kernel may still be writing, read before await_previous_kernel() only to pick an address to
// prefetch_l2 (the value may be the old one; read it again after the wait for any other use). ld.relaxed.gpu goes to
// L2 and leaves no L1 line behind that a load after the wait could hit.
__device__ __forceinline__ int32_t load_for_prefetch(const int32_t* ptr) {
    int32_t value;
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(value) : "l"(ptr));
    return value;
}

// ---- pushes between the CTAs of a cluster -----------------------------------------------------------------------
// A sender stores into the receiver's shared memory with st.async, each store counted in bytes on an mbarrier of the
// receiver; the receiver's wait (acquire at cluster scope) then sees every pushed byte. Whoever arrives on the barrier
// (once a phase) states the phase's bytes; the arrival and the stores may come in either order (the transaction count
// may go negative until the arrival).

// The shared::cluster address in CTA `rank` of what p points to in this CTA's shared memory.
__device__ __forceinline__ uint32_t peer_address(const void* p, uint32_t rank) {
    uint32_t address;
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(address) : "r"(shared_address(p)), "r"(rank));
    return address;
}
// An mbarrier of one arrival a phase, visible to the cluster once a cluster barrier follows.
__device__ __forceinline__ void init_push_barrier(unsigned long long* bar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(bar)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void push_u32(uint32_t address, uint32_t value, uint32_t bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.u32 [%0], %1, [%2];" ::"r"(address),
                 "r"(value), "r"(bar)
                 : "memory");
}
// The arrival on a barrier `bar` (a shared::cluster address: this CTA's or a peer's) with the phase's bytes.
__device__ __forceinline__ void arrive_pushed(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.relaxed.cluster.shared::cluster.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}
// Returns once the phase of parity `parity` of this CTA's barrier has completed.
__device__ __forceinline__ void wait_pushed(const unsigned long long* bar, uint32_t parity = 0) {
    uint32_t done;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
            " selp.u32 %0, 1, 0, p;\n}"
            : "=r"(done)
            : "r"(shared_address(bar)), "r"(parity)
            : "memory");
    } while (!done);
}

__device__ __forceinline__ float warp_reduce_sum(float x) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xFFFFFFFFu, x, offset);
    return x;
}

__device__ __forceinline__ float warp_reduce_max(float x) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, offset));
    return x;
}

// Every thread of a kBlockSize-thread block gets the block's sum (max). Uses 32 floats of shared memory and
// two __syncthreads(), so a block may call it several times in a row.
template <int kBlockSize>
__device__ __forceinline__ float block_reduce_sum(float x) {
    static_assert(kBlockSize % kWarpSize == 0 && kBlockSize <= 1024, "block size: a multiple of 32, at most 1024");
    constexpr int kWarps = kBlockSize / kWarpSize;
    __shared__ float warp_partials[kWarps];
    const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    x = warp_reduce_sum(x);
    __syncthreads();  // a previous call's readers are done with warp_partials
    if (lane == 0) warp_partials[warp] = x;
    __syncthreads();
    x = lane < kWarps ? warp_partials[lane] : 0.0f;
    return warp_reduce_sum(x);
}

template <int kBlockSize>
__device__ __forceinline__ float block_reduce_max(float x) {
    static_assert(kBlockSize % kWarpSize == 0 && kBlockSize <= 1024, "block size: a multiple of 32, at most 1024");
    constexpr int kWarps = kBlockSize / kWarpSize;
    __shared__ float warp_partials[kWarps];
    const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    x = warp_reduce_max(x);
    __syncthreads();
    if (lane == 0) warp_partials[warp] = x;
    __syncthreads();
    x = lane < kWarps ? warp_partials[lane] : -INFINITY;
    return warp_reduce_max(x);
}

}  // namespace dsv4
