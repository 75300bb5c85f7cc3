// Token embedding: gather rows of the bf16 table and broadcast each into the hc_mult copies of the residual
// stream (SPEC section 4). Pure data movement: reads n_tokens * dim * 2 bytes, writes hc_mult times that.
#include <algorithm>

#include "common.cuh"

namespace {

constexpr int kGatherThreads = 256;
constexpr int kBf16PerVec = sizeof(dsv4::Vec16) / sizeof(__nv_bfloat16);  // 8

// One thread per (token, 16-byte column chunk): consecutive threads read consecutive chunks of one table row
// (coalesced) and write them to the same chunk of each of the hc_mult copies. Grid-stride over all chunks.
__global__ void __launch_bounds__(kGatherThreads)
    embed_gather_bf16_kernel(dsv4::Vec16* __restrict__ out,          // [n_tokens, hc_mult, vecs_per_row]
                             const dsv4::Vec16* __restrict__ table,  // [vocab, vecs_per_row]
                             const int32_t* __restrict__ token_ids,  // [n_tokens]
                             int64_t n_tokens, int64_t vocab, int64_t vecs_per_row, int64_t hc_mult) {
    dsv4::await_previous_kernel();
    const int64_t n_chunks = n_tokens * vecs_per_row;
    for (int64_t chunk = blockIdx.x * int64_t(kGatherThreads) + threadIdx.x; chunk < n_chunks;
         chunk += int64_t(gridDim.x) * kGatherThreads) {
        const int64_t token = chunk / vecs_per_row, col = chunk % vecs_per_row;
        const int64_t id = __ldg(token_ids + token);
        // Out-of-range ids write zeros (documented in dsv4.h) instead of reading outside the table.
        const dsv4::Vec16 v = (id >= 0 && id < vocab) ? __ldg(table + id * vecs_per_row + col) : make_uint4(0, 0, 0, 0);
        dsv4::Vec16* dst = out + token * hc_mult * vecs_per_row + col;
        for (int64_t copy = 0; copy < hc_mult; ++copy) dst[copy * vecs_per_row] = v;
    }
}

int launch_embed_gather_bf16(void* out, const void* table, const int32_t* token_ids, int64_t n_tokens,
                             int64_t vocab, int64_t dim, int64_t hc_mult, cudaStream_t stream) {
    const int64_t vecs_per_row = dim / kBf16PerVec;
    const int64_t n_chunks = n_tokens * vecs_per_row;
    // Enough blocks to fill every SM many times over; the grid-stride loop covers the rest.
    constexpr int64_t kMaxBlocks = 1 << 16;
    const int64_t blocks = std::min((n_chunks + kGatherThreads - 1) / kGatherThreads, kMaxBlocks);
    DSV4_CHECK_LAUNCH(dsv4::launch_kernel(dsv4::Launch::kOverlapPrevious, embed_gather_bf16_kernel,
                                          static_cast<unsigned>(blocks), kGatherThreads, 0, stream,
                                          static_cast<dsv4::Vec16*>(out), static_cast<const dsv4::Vec16*>(table),
                                          token_ids, n_tokens, vocab, vecs_per_row, hc_mult));
    return DSV4_OK;
}

}  // namespace

DSV4_API int dsv4_embed_gather_bf16(void* out, const void* table, const int32_t* token_ids, int64_t n_tokens,
                                    int64_t vocab, int64_t dim, int64_t hc_mult, cudaStream_t stream) {
    return dsv4::guarded(__func__, [&] {
        DSV4_CHECK_ARG(n_tokens >= 0, DSV4_ERR_SHAPE, "n_tokens = %lld is negative", (long long)n_tokens);
        DSV4_CHECK_ARG(vocab > 0 && vocab <= INT32_MAX, DSV4_ERR_SHAPE, "vocab = %lld is not in [1, 2^31)",
                       (long long)vocab);
        DSV4_CHECK_ARG(dim > 0 && dim % kBf16PerVec == 0, DSV4_ERR_SHAPE,
                       "dim = %lld is not a positive multiple of %d (16-byte bf16 vectors)", (long long)dim,
                       kBf16PerVec);
        DSV4_CHECK_ARG(hc_mult > 0, DSV4_ERR_SHAPE, "hc_mult = %lld is not positive", (long long)hc_mult);
        // Element counts of out and table stay far below 2^62, so int64 indexing cannot overflow.
        DSV4_CHECK_ARG(n_tokens <= (INT64_C(1) << 62) / hc_mult / dim && vocab <= (INT64_C(1) << 62) / dim,
                       DSV4_ERR_SHAPE, "out [%lld, %lld, %lld] or table [%lld, %lld] is too large",
                       (long long)n_tokens, (long long)hc_mult, (long long)dim, (long long)vocab, (long long)dim);
        if (n_tokens == 0) return DSV4_OK;
        DSV4_CHECK_PTR(out, 16);
        DSV4_CHECK_PTR(table, 16);
        DSV4_CHECK_PTR(token_ids, 4);
        return launch_embed_gather_bf16(out, table, token_ids, n_tokens, vocab, dim, hc_mult, stream);
    });
}
