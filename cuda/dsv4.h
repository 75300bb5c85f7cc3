/* pydsv4 C API: every entry of every build/libdsv4_<family>.so.
 *
 * Conventions (every family follows them; pydsv4/cuda/families/<family>.py binds them, and
 * tests/test_cuda_runtime.py fails when this header and those bindings disagree):
 *  - Names: dsv4_<family>_<op>[_<dtypes>], e.g. dsv4_embed_gather_bf16.
 *  - Arguments: outputs, inputs, sizes (int64_t), strides (int64_t, in elements), scalars, cudaStream_t last.
 *    Every pointer argument carries a shape comment. Ops with many arguments take `const dsv4_<op>_params*`
 *    (a POD struct declared here) and export `size_t dsv4_<op>_params_size(void)`, which Python compares with
 *    its ctypes.Structure when it loads the library.
 *  - Every entry returns int: DSV4_OK, a cudaError_t (1..999) from a failed launch or runtime call, or a
 *    DSV4_ERR_* code for bad arguments, detected before anything is launched. After a non-zero return,
 *    dsv4_last_error() of the same library, on the same thread, says "entry: what was wrong".
 *  - Entries never exit, throw or allocate; scratch memory is sized by dsv4_<op>_workspace_bytes(...) and
 *    passed in. Empty work (e.g. n_tokens == 0) returns DSV4_OK without launching; its pointers may be NULL.
 *  - Entries are asynchronous on `stream` and safe to capture into a CUDA graph.
 *  - Their kernels use programmatic dependent launch: one may be scheduled before the kernel ahead of it on the
 *    stream has finished, and touches no memory until it has (griddepcontrol.wait), except to warm L2: the
 *    small-batch mhc, kv and sampling kernels prefetch their inputs into L2 meanwhile (a prefetch never makes a later
 *    read stale), and dsv4_rope_kv_fp8 reads its positions early only to pick the table rows to start on, keeping
 *    them after the wait only where the position still reads the same. It lets the next kernel be scheduled early
 *    in turn, so a kernel of yours that follows with programmatic stream serialization must wait the same way before
 *    reading our outputs. DSV4_PDL=0 in the environment turns it off.
 *
 * Layout of this file: one section per family, in the order the families were added; a new family appends a
 * section at the end. Keep one prototype per declaration, `type name` per argument, no macros in prototypes
 * (the binding test parses this file with a regular expression).
 */
#ifndef DSV4_H
#define DSV4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The same typedef as cuda_runtime.h; repeating an identical typedef is legal in C11 and C++. */
typedef struct CUstream_st* cudaStream_t;

/* Status codes. 1..999 are cudaError_t values passed through unchanged. */
#define DSV4_OK 0
#define DSV4_ERR_NULL_POINTER 1000 /* a required pointer is NULL */
#define DSV4_ERR_ALIGNMENT 1001    /* a pointer (or stride) breaks the entry's alignment requirement */
#define DSV4_ERR_SHAPE 1002        /* a size is negative, zero where it may not be, or not a required multiple */
#define DSV4_ERR_STRIDE 1003       /* a stride is smaller than the row it spans, or not a required multiple */
#define DSV4_ERR_ARGUMENT 1004     /* a scalar argument is out of range */
#define DSV4_ERR_WORKSPACE 1005    /* the workspace is smaller than dsv4_<op>_workspace_bytes(...) */
#define DSV4_ERR_UNSUPPORTED 1006  /* a valid combination this build does not implement */
#define DSV4_ERR_INTERNAL 1007     /* a C++ exception reached the entry boundary (a bug) */

/* "entry: message" of the last failed entry of this library on the calling thread ("" if none failed). */
const char* dsv4_last_error(void);

/* ---- embed (cuda/embed.cu) -------------------------------------------------------------------------------- */

/* out[t, c, :] = table[token_ids[t], :] for every copy c < hc_mult (the residual stream's hc copies).
 * A token id outside [0, vocab) writes a row of zeros (the host cannot check device ids without a sync).
 * Requires dim % 8 == 0 and 16-byte aligned out and table (16-byte vector copies). */
int dsv4_embed_gather_bf16(void* out,                /* [n_tokens, hc_mult, dim] bf16 */
                           const void* table,        /* [vocab, dim] bf16 */
                           const int32_t* token_ids, /* [n_tokens] */
                           int64_t n_tokens, int64_t vocab, int64_t dim, int64_t hc_mult, cudaStream_t stream);

/* ---- norm (cuda/norm.cu) --------------------------------------------------------------------------------- */

/* RMSNorm: y[t, :] = bf16(weight * (x[t, :] * 1 / sqrt(mean(x[t, :]^2) + eps))), fp32 math (SPEC 4).
 * Requires dim % 8 == 0, dim <= 16384; strides (elements) >= dim and multiples of 8; 16-byte aligned y, x and
 * weight. y == x (same stride) is allowed: each row is read completely before it is written. */
int dsv4_norm_rms_bf16(void* y,            /* [n_tokens, y_stride] bf16 */
                       const void* x,      /* [n_tokens, x_stride] bf16 */
                       const float* weight, /* [dim] fp32 */
                       int64_t n_tokens, int64_t dim, int64_t y_stride, int64_t x_stride, float eps,
                       cudaStream_t stream);

/* RMSNorm fused with FP8 activation quantization per 128 along dim: q, scale = act_quant(rms_norm(x), 128),
 * the quantizer seeing the bf16-rounded normed values; y (nullable) also receives them.
 * scale of (token t, block b) is at scale[t * scale_stride_token + b * scale_stride_block]: row-major
 * (stride_token >= dim / 128 * stride_block) or transposed (stride_block >= n_tokens * stride_token).
 * Requires dim % 128 == 0, dim <= 16384; q_stride % 8 == 0 and q 8-byte aligned; x, y, weight as above. */
typedef struct dsv4_norm_rms_quant_params {
    void* q;                    /* [n_tokens, q_stride] e4m3 */
    float* scale;               /* see scale_stride_*: dim / 128 fp32 powers of two per token */
    void* y;                    /* [n_tokens, y_stride] bf16, or NULL */
    const void* x;              /* [n_tokens, x_stride] bf16 */
    const float* weight;        /* [dim] fp32 */
    int64_t n_tokens;
    int64_t dim;
    int64_t q_stride;           /* elements (bytes) */
    int64_t scale_stride_token; /* elements */
    int64_t scale_stride_block; /* elements */
    int64_t y_stride;           /* elements; ignored when y is NULL */
    int64_t x_stride;           /* elements */
    float eps;
} dsv4_norm_rms_quant_params;
size_t dsv4_norm_rms_quant_params_size(void);
int dsv4_norm_rms_quant_e4m3(const dsv4_norm_rms_quant_params* params, cudaStream_t stream);

/* FP8 activation quantization of bf16 rows: q, scale = act_quant(x, block), block 64 or 128 (SPEC 2).
 * Scale layout as dsv4_norm_rms_quant_params. Requires dim % block == 0, dim <= 32768, 16-byte aligned x with
 * x_stride % 8 == 0, 8-byte aligned q with q_stride % 8 == 0. Inputs must be finite. */
typedef struct dsv4_norm_act_quant_params {
    void* q;                    /* [n_tokens, q_stride] e4m3 */
    float* scale;               /* see scale_stride_*: dim / block fp32 powers of two per token */
    const void* x;              /* [n_tokens, x_stride] bf16 */
    int64_t n_tokens;
    int64_t dim;
    int64_t q_stride;           /* elements (bytes) */
    int64_t scale_stride_token; /* elements */
    int64_t scale_stride_block; /* elements */
    int64_t x_stride;           /* elements */
    int64_t block;              /* 64 or 128 */
} dsv4_norm_act_quant_params;
size_t dsv4_norm_act_quant_params_size(void);
int dsv4_norm_act_quant_e4m3(const dsv4_norm_act_quant_params* params, cudaStream_t stream);

/* ---- rope (cuda/rope.cu) --------------------------------------------------------------------------------- */
/* Heads are 512 wide; RoPE rotates their last 64 dims as 32 pairs (2k, 2k+1) (SPEC 5). The rotation kernels
 * read the angle's cos and sin from a table [table_positions, 32, 2] fp32 built by dsv4_rope_table_f32 (one
 * per frequency set). A position outside [0, table_positions) turns the rotated dims into NaN. */

/* table[p, k] = (cos, sin) of fl32(float(p) * freqs[k]), evaluated in double and rounded to fp32.
 * Requires n_positions <= 2^24 (float(p) exact), 8-byte aligned table. */
int dsv4_rope_table_f32(float* table,       /* [n_positions, n_pairs, 2] fp32 (cos, sin) */
                        const float* freqs, /* [n_pairs] fp32 (ops.rope_freqs) */
                        int64_t n_positions, int64_t n_pairs, cudaStream_t stream);

/* q path, in place: each head q[t, h, :] /= sqrt(mean(q[t, h, :]^2) + eps) (no weight, fp32, bf16 result),
 * then RoPE on its last 64 dims at positions[t]. Heads of a token are contiguous; q_stride (elements) >=
 * n_heads * 512, a multiple of 8; q and table 16-byte aligned. */
int dsv4_rope_q_norm_rope_bf16(void* q,                  /* [n_tokens, q_stride] bf16, heads [n_heads, 512] */
                               const int32_t* positions, /* [n_tokens] */
                               const float* table,       /* [table_positions, 32, 2] fp32 */
                               int64_t n_tokens, int64_t n_heads, int64_t table_positions, int64_t q_stride,
                               float eps, cudaStream_t stream);

/* Inverse RoPE (conjugate rotation) of the last 64 dims of every head of the attention output, in place.
 * Layout requirements as dsv4_rope_q_norm_rope_bf16. */
int dsv4_rope_inverse_bf16(void* o,                  /* [n_tokens, o_stride] bf16, heads [n_heads, 512] */
                           const int32_t* positions, /* [n_tokens] */
                           const float* table,       /* [table_positions, 32, 2] fp32 */
                           int64_t n_tokens, int64_t n_heads, int64_t table_positions, int64_t o_stride,
                           cudaStream_t stream);

/* kv path: y = rope_tail(kv_norm(kv[t])) (bf16), then its 448 nope dims FP8 per 64 with ue8m0 scales, written
 * as the KV-cache entry of slot_mapping[t]; a slot outside [0, n_slots) skips the token.
 * Cache layout (FlashMLA "MODEL1" FP8): page blocks of block_size tokens, block_stride_bytes apart; slot s is
 * token i = s % block_size of page s / block_size, whose 576 data bytes are at page + i * 576 (448 e4m3 nope
 * dims, then the 64 rope dims as bf16) and 8 scale bytes at page + block_size * 576 + i * 8 (7 e8m0 bytes
 * 127 + log2(scale), then 0). block_size = 1, block_stride_bytes = 584: one 584-byte record per slot.
 * Requires 8-byte aligned cache with block_stride_bytes % 8 == 0 and >= block_size * 584; kv_stride >= 512, a
 * multiple of 8; kv, weight, table 16-byte aligned. */
typedef struct dsv4_rope_kv_params {
    void* cache;                 /* [n_slots / block_size pages, block_stride_bytes] uint8, see above */
    const void* kv;              /* [n_tokens, kv_stride] bf16 (the wkv output) */
    const float* weight;         /* [512] fp32 (kv_norm) */
    const int32_t* positions;    /* [n_tokens] */
    const int32_t* slot_mapping; /* [n_tokens] */
    const float* table;          /* [table_positions, 32, 2] fp32 */
    int64_t n_tokens;
    int64_t n_slots;             /* slots the cache holds */
    int64_t block_size;          /* tokens per page block, in [1, 2^31) */
    int64_t block_stride_bytes;
    int64_t kv_stride;           /* elements */
    int64_t table_positions;
    float eps;
} dsv4_rope_kv_params;
size_t dsv4_rope_kv_params_size(void);
int dsv4_rope_kv_fp8(const dsv4_rope_kv_params* params, cudaStream_t stream);

/* ---- mhc (cuda/mhc.cu) ----------------------------------------------------------------------------------- */
/* Manifold-constrained hyper-connections (SPEC 4, 9) on the residual stream x [n_tokens, 4, dim] bf16 (hc_mult 4).
 * hc_pre and hc_head are a split-K tensor-core product (mix partials, into the workspace) then a per-token
 * finalize; their workspace is dsv4_mhc_{pre,head}_workspace_bytes(n_tokens, dim) bytes (0 for n_tokens == 0).
 * In a layer, hc_post runs right before the next hc_pre (or, after the last layer, hc_head): use
 * dsv4_mhc_post_mix_bf16 there, which also writes the next mix product's partials, and pass them to hc_pre /
 * hc_head as `partials`; they then only finalize and read x once instead of twice.
 * Requires dim % 128 == 0, dim <= 8192; x, fn, norm_weight, y and the workspace 16-byte aligned. */
size_t dsv4_mhc_pre_workspace_bytes(int64_t n_tokens, int64_t dim);
size_t dsv4_mhc_head_workspace_bytes(int64_t n_tokens, int64_t dim);

/* hc_pre fused with the RMSNorm and FP8 quantization that follow it (ops.hc_pre, ops.rms_norm, quant.act_quant):
 * mix = (flat(x) . fn^T) * rsqrt(mean(flat(x)^2) + mix_eps); pre = sigmoid(mix[0:4] * hc_scale[0] + hc_base[0:4])
 * + hc_eps; post = 2 sigmoid(mix[4:8] * hc_scale[1] + hc_base[4:8]); comb = Sinkhorn(mix[8:24] * hc_scale[2] +
 * hc_base[8:24], sinkhorn_iters, hc_eps); y = rms_norm(bf16(sum_i pre_i x_i), norm_weight, norm_eps);
 * q, scale = act_quant(y, 128) (scale layout as dsv4_norm_rms_quant_params). y and q (with scale) are optional. */
typedef struct dsv4_mhc_pre_params {
    float* post;                /* [n_tokens, 4] fp32 */
    float* comb;                /* [n_tokens, 4, 4] fp32: comb[t, i, j] weighs copy i into new copy j */
    void* y;                    /* [n_tokens, dim] bf16, or NULL */
    void* q;                    /* [n_tokens, dim] e4m3 (8-byte aligned), or NULL */
    float* scale;               /* q's scales at [t * scale_stride_token + b * scale_stride_block], b < dim / 128; NULL iff q is */
    const void* x;              /* [n_tokens, 4, dim] bf16 */
    const float* fn;            /* [24, 4 * dim] fp32 (hc_{attn,ffn}_fn) */
    const float* hc_scale;      /* [3] fp32 */
    const float* hc_base;       /* [24] fp32 */
    const float* norm_weight;   /* [dim] fp32 ({attn,ffn}_norm.weight) */
    const float* partials;      /* NULL: the mix is computed here; else dsv4_mhc_post_mix_bf16's partials of this x
                                   (same n_tokens) and this fn, num_mix 24 (then fn and the workspace are not read
                                   and may be NULL / 0 bytes) */
    void* workspace;            /* dsv4_mhc_pre_workspace_bytes(n_tokens, dim) bytes */
    size_t workspace_bytes;
    int64_t n_tokens;
    int64_t dim;
    int64_t scale_stride_token; /* elements */
    int64_t scale_stride_block; /* elements */
    int64_t sinkhorn_iters;     /* >= 1 (hc_sinkhorn_iters) */
    float hc_eps;
    float mix_eps;              /* eps of the mix's rsqrt (norm_eps) */
    float norm_eps;             /* eps of the RMSNorm */
} dsv4_mhc_pre_params;
size_t dsv4_mhc_pre_params_size(void);
int dsv4_mhc_pre_bf16(const dsv4_mhc_pre_params* params, cudaStream_t stream);

/* hc_head (ops.hc_head): pre = sigmoid(mix * hc_scale[0] + hc_base) + hc_eps with mix from fn [4, 4 dim] as in
 * hc_pre; y = bf16(sum_i pre_i x_i), then y = rms_norm(y, norm_weight, norm_eps) when norm_weight is not NULL. */
typedef struct dsv4_mhc_head_params {
    void* y;                    /* [n_tokens, dim] bf16 */
    const void* x;              /* [n_tokens, 4, dim] bf16 */
    const float* fn;            /* [4, 4 * dim] fp32 (hc_head_fn) */
    const float* hc_scale;      /* [1] fp32 */
    const float* hc_base;       /* [4] fp32 */
    const float* norm_weight;   /* [dim] fp32 (norm.weight), or NULL: y is hc_head's output unnormed */
    const float* partials;      /* NULL, or dsv4_mhc_post_mix_bf16's partials of this x (same n_tokens) and this
                                   fn, num_mix 4 */
    void* workspace;            /* dsv4_mhc_head_workspace_bytes(n_tokens, dim) bytes */
    size_t workspace_bytes;
    int64_t n_tokens;
    int64_t dim;
    float hc_eps;
    float mix_eps;
    float norm_eps;
} dsv4_mhc_head_params;
size_t dsv4_mhc_head_params_size(void);
int dsv4_mhc_head_bf16(const dsv4_mhc_head_params* params, cudaStream_t stream);

/* hc_post (ops.hc_post): out[t, j, :] = bf16(post[t, j] * f[t, :] + sum_i comb[t, i, j] * x[t, i, :]).
 * out may be x itself (in place), but not partially overlap it. Requires dim % 8 == 0; out, x, f, post and comb
 * 16-byte aligned. */
int dsv4_mhc_post_bf16(void* out,          /* [n_tokens, 4, dim] bf16 */
                       const void* x,      /* [n_tokens, 4, dim] bf16 */
                       const void* f,      /* [n_tokens, dim] bf16 (the attention / MoE output) */
                       const float* post,  /* [n_tokens, 4] fp32 */
                       const float* comb,  /* [n_tokens, 4, 4] fp32 */
                       int64_t n_tokens, int64_t dim, cudaStream_t stream);

/* hc_post fused with the mix product of the hc_pre / hc_head that follows it: out as dsv4_mhc_post_bf16, and
 * partials[c, t, :] = the mix partials of out over dims 128c .. 128c + 127 of its 4 copies against fn (the next
 * hc_pre's 24 rows or hc_head's 4), for that entry's `partials`. Requires dim % 128 == 0, dim <= 8192; out, x, f,
 * post, comb, fn and partials 16-byte aligned; out may be x itself (in place). Pays off for large batches (at
 * V4-Pro x 4096 on an H100, post_mix + hc_pre from its partials take 361 us against 451 us for hc_post + hc_pre);
 * for a few tokens the separate entries are faster. */
typedef struct dsv4_mhc_post_mix_params {
    void* out;                  /* [n_tokens, 4, dim] bf16: the new stream */
    float* partials;            /* [dim / 128, n_tokens, num_mix + 1] fp32 (mix sums, then sum(out^2)), in
                                   dsv4_mhc_post_mix_partials_bytes(n_tokens, dim) bytes (enough for num_mix 24) */
    const void* x;              /* [n_tokens, 4, dim] bf16 */
    const void* f;              /* [n_tokens, dim] bf16 (the attention / MoE output) */
    const float* post;          /* [n_tokens, 4] fp32 */
    const float* comb;          /* [n_tokens, 4, 4] fp32 */
    const float* fn;            /* [num_mix, 4 * dim] fp32: the next hc_pre's (hc_{attn,ffn}_fn) or hc_head_fn */
    int64_t n_tokens;
    int64_t dim;
    int64_t num_mix;            /* 24 (hc_pre) or 4 (hc_head) */
} dsv4_mhc_post_mix_params;
size_t dsv4_mhc_post_mix_params_size(void);
size_t dsv4_mhc_post_mix_partials_bytes(int64_t n_tokens, int64_t dim);
int dsv4_mhc_post_mix_bf16(const dsv4_mhc_post_mix_params* params, cudaStream_t stream);

/* ---- sample (cuda/sample.cu) ----------------------------------------------------------------------------- */
/* Token sampling over fp32 logits, exactly as defined at the top of pydsv4/sampling.py (Sampler.sample): one
 * cluster of 8 CTAs per row, no workspace. A row on which the CPU sampler raises (NaN or +inf in logits / T,
 * no finite value) gets token -1. Requires vocab <= 327680, logits_stride >= vocab and a multiple of 4 (the
 * row's tail up to logits_stride must be readable), 16-byte aligned logits, 4-byte aligned tokens. */

/* tokens[r] = argmax(logits[r, :vocab]), ties to the lowest id. */
int dsv4_sample_greedy_f32(int32_t* tokens,     /* [batch] */
                           const float* logits, /* [batch, logits_stride] fp32 */
                           int64_t batch, int64_t vocab, int64_t logits_stride, cudaStream_t stream);

/* Sampler(temperature, top_k, top_p, seed).sample(logits, step): temperature 0 is greedy; top_k 0 (or >= vocab)
 * and top_p 1 switch their filter off. Row r draws its Gumbel noise at Philox counter (token, r, step, 0) with
 * key (seed low, seed high). The top-p cut sums masses in another order than the CPU's sorted fp32 walk, so a
 * row whose cumulative mass crosses top_p within rounding can keep one token more or less. */
int dsv4_sample_tokens_f32(int32_t* tokens,     /* [batch] */
                           const float* logits, /* [batch, logits_stride] fp32 */
                           int64_t batch, int64_t vocab, int64_t logits_stride, float temperature, int64_t top_k,
                           float top_p, uint64_t seed, int64_t step, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DSV4_H */
