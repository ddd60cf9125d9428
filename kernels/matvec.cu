// Quantized matrix-vector products: y[r][o] = W[o] . x[r] for up to R rows per block.
//
// One warp (or `split` warps of a block, each a slice of K) computes one output feature for R
// rows. Four lanes share each 32-value chunk, so a warp's weight and activation loads are
// contiguous; each lane dequantizes its 8 values in registers and accumulates their dot with
// every row; a butterfly reduction (and a fixed-order sum of the slices) finishes. `split`
// depends only on the weight's shape. Every row's arithmetic is the same
// whatever R and the number of rows: results are batch-invariant, bit for bit.

#define MMV_WARPS 4

// Compilation units (`sources::units`) each keep one part of the instantiations below
// (KILN_PART, set by the unit); without it (the host tests) every part is kept.
#ifndef KILN_IN
#define KILN_IN(k) 1
#endif

// The dot products of weight row `o` with rows r0..r0+R of x, for the K-slice `slice` of
// `split` (1, 2 or 4): four lanes share a 32-value chunk (8 values each), so a warp covers 8
// neighbouring chunks per step and slice s takes the groups of 8 chunks s, s + split, ...
// Reduced across the warp (every lane gets the slice's sums).
// With `nw` (an RMS norm's weight) the dots are with x * nw, and `ss` (if not null) gets each
// row's sum of squares of x over the slice, for the norm's scale.
//
// `mmv_dots_rows` takes the O weight rows to use (acc[i * R + r] is row wrs[i] with x row r);
// `mmv_dots` the rows o .. o + O - 1 (clamped to `last`) of W. Every (weight row, x row) sum
// takes exactly the operations it takes alone, so O is a free choice of the caller: it reuses
// each x load O times and keeps O rows' loads in flight.
template <int T, int R, int O>
__device__ __forceinline__ void mmv_dots_rows(const u8* const* wrs, const float* __restrict__ x,
                                              int K, int rows, int x_stride, int r0, int slice,
                                              int split, float* acc,
                                              const float* __restrict__ nw, float* ss) {
    const int lane = threadIdx.x & 31, q = lane & 3;
    const int nchunks = K >> 5;
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int i = 0; i < O; i++) acc[i * R + r] = 0.0f;
        if (ss) ss[r] = 0.0f;
    }
    // Four chunks in flight for one or two dot products per lane, two up to eight; big tiles
    // (R * O > 8) have enough work per chunk, and unrolling them would only grow the code.
    // Every lane takes the same number of steps (a lane past the last chunk reads the last
    // one and drops its sums), so the unrolled loads are issued together rather than half
    // the warp running a remainder loop one load at a time.
#pragma unroll(R * O <= 2 ? 4 : R * O <= 8 ? 2 : 1)
    for (int c0 = slice * 8; c0 < nchunks; c0 += 8 * split) {
        const bool on = c0 + (lane >> 2) < nchunks;
        const int c = on ? c0 + (lane >> 2) : nchunks - 1;
        float w[O][8];
#pragma unroll
        for (int i = 0; i < O; i++)
            deq8<T>(wrs[i] + (long)(c / QT<T>::SUBS) * QT<T>::BYTES, c % QT<T>::SUBS, q, w[i]);
        float4 na, nb;
        if (nw) {
            const float4* nv = (const float4*)(nw + (c << 5) + 8 * q);
            na = __ldg(nv);
            nb = __ldg(nv + 1);
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r0 + r < rows) {
                const float4* xv = (const float4*)(x + (long)(r0 + r) * x_stride + (c << 5) + 8 * q);
                float4 a = __ldg(xv), b = __ldg(xv + 1);
                if (nw) {
                    if (ss) {
                        float t = a.x * a.x;
                        t = fmaf(a.y, a.y, t);
                        t = fmaf(a.z, a.z, t);
                        t = fmaf(a.w, a.w, t);
                        t = fmaf(b.x, b.x, t);
                        t = fmaf(b.y, b.y, t);
                        t = fmaf(b.z, b.z, t);
                        t = fmaf(b.w, b.w, t);
                        if (on) ss[r] += t;
                    }
                    a.x *= na.x; a.y *= na.y; a.z *= na.z; a.w *= na.w;
                    b.x *= nb.x; b.y *= nb.y; b.z *= nb.z; b.w *= nb.w;
                }
#pragma unroll
                for (int i = 0; i < O; i++) {
                    float s = w[i][0] * a.x;
                    s = fmaf(w[i][1], a.y, s);
                    s = fmaf(w[i][2], a.z, s);
                    s = fmaf(w[i][3], a.w, s);
                    s = fmaf(w[i][4], b.x, s);
                    s = fmaf(w[i][5], b.y, s);
                    s = fmaf(w[i][6], b.z, s);
                    s = fmaf(w[i][7], b.w, s);
                    if (on) acc[i * R + r] += s;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int i = 0; i < O; i++) acc[i * R + r] = warp_sum(acc[i * R + r]);
        if (ss) ss[r] = warp_sum(ss[r]);
    }
}

template <int T, int R, int O = 1>
__device__ __forceinline__ void mmv_dots(const u8* __restrict__ W, const float* __restrict__ x,
                                         int K, int rows, int x_stride, int r0, int o,
                                         int slice, int split, float* acc,
                                         const float* __restrict__ nw = nullptr,
                                         float* ss = nullptr, int last = 0) {
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const u8* wrs[O];
#pragma unroll
    for (int i = 0; i < O; i++) wrs[i] = W + (long)(O == 1 ? o : min(o + i, last)) * row_bytes;
    mmv_dots_rows<T, R, O>(wrs, x, K, rows, x_stride, r0, slice, split, acc, nw, ss);
}

// Bytes of one weight row of type `type` with K values.
__device__ __forceinline__ long qrow_bytes(int type, int K) {
    int b = 0, subs = 1;
    switch (type) {
#define QB_CASE(T) case T: b = QT<T>::BYTES; subs = QT<T>::SUBS; break;
        QB_CASE(T_F32) QB_CASE(T_F16) QB_CASE(T_BF16) QB_CASE(T_Q4_0) QB_CASE(T_Q4_1)
        QB_CASE(T_Q5_0) QB_CASE(T_Q5_1) QB_CASE(T_Q8_0) QB_CASE(T_MXFP4) QB_CASE(T_Q2_K)
        QB_CASE(T_Q3_K) QB_CASE(T_Q4_K) QB_CASE(T_Q5_K) QB_CASE(T_Q6_K)
#undef QB_CASE
    }
    return (long)((K >> 5) / subs) * b;
}

// Before the kernel waits for its input (`pdl_begin`): the first row tile's block asks L2
// for the weight rows it will read (`n` rows of `row_bytes` from row `o`), so the loads after
// the wait hit L2 instead of DRAM. Weights never change while kernels run.
__device__ __forceinline__ void mmv_prefetch(const u8* W, long row_bytes, int o, int n, int N) {
    if (blockIdx.y == 0 && o < N)
        prefetch_l2(W + (long)o * row_bytes, (long)min(n, N - o) * row_bytes, threadIdx.x,
                    blockDim.x);
}

// Sums the slices of a block's outputs: warp w holds slice w % split of output w / split.
// Afterwards the first warp of each output holds the total (in slice order: the arithmetic
// depends only on the shape).
template <int R>  // R: values per warp
__device__ __forceinline__ void mmv_merge(float* acc, int split, float (*red)[R]) {
    if (split == 1) return;
    const int w = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int r = 0; r < R; r++) red[w][r] = acc[r];
    __syncthreads();
    if (w % split == 0)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float t = red[w][r];
            for (int s = 1; s < split; s++) t += red[w + s][r];
            acc[r] = t;
        }
}

// Writes a warp's totals: output o0 + i of row r0 + r is acc[i * R + r], scaled by the RMS
// norm's 1/rms (with `ss`, each row's sum of squares over K), plus the bias; `accumulate` adds
// it to what y holds (the caller's residual sum).
template <int R, int O>
__device__ __forceinline__ void mmv_store(const float* acc, const float* ss, int K, float eps,
                                          int o0, int N, int r0, int rows, float* y, int ys,
                                          const float* bias, int accumulate) {
#pragma unroll
    for (int i = 0; i < O; i++) {
        const int o = o0 + i;
        if (o >= N) break;
        const float bv = bias ? bias[o] : 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r0 + r < rows) {
                float v = ss ? acc[i * R + r] * rsqrtf(ss[r] / (float)K + eps) : acc[i * R + r];
                if (bias) v += bv;
                float* dst = y + (long)(r0 + r) * ys + o;
                *dst = accumulate ? *dst + v : v;
            }
        }
    }
}

// y = W.x (+ bias) (accumulate: y += W.x (+ bias), the residual sum of the caller).
// A warp computes O consecutive outputs (a block (MMV_WARPS / split) * O).
template <int T, int R, int O>
__device__ __forceinline__ void mmv(const u8* W, const float* x, float* y, int K, int N, int rows,
                                    int x_stride, int y_stride, const float* bias, int accumulate,
                                    int split) {
    __shared__ float red[MMV_WARPS][O * R];
    if (N <= 0) return;
    const int w = threadIdx.x >> 5;
    const int o0 = (blockIdx.x * (MMV_WARPS / split) + w / split) * O;
    const int r0 = blockIdx.y * R;
    mmv_prefetch(W, (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES,
                 blockIdx.x * (MMV_WARPS / split) * O, (MMV_WARPS / split) * O, N);
    pdl_begin();
    float acc[O * R];
    mmv_dots<T, R, O>(W, x, K, rows, x_stride, r0, min(o0, N - 1), w % split, split, acc,
                      nullptr, nullptr, N - 1);
    mmv_merge<O * R>(acc, split, red);
    if ((threadIdx.x & 31) != 0 || w % split != 0) return;
    mmv_store<R, O>(acc, nullptr, 0, 0.0f, o0, N, r0, rows, y, y_stride, bias, accumulate);
}

// y = act(Wg.x) * (Wu.x), both weights of type T.
// With `nw`, x is first RMS-normed with weight nw (and `eps`): the norm is fused.
template <int T, int R, int O>
__device__ __forceinline__ void mmv_glu(const u8* Wg, const u8* Wu, const float* x, float* y,
                                        int K, int N, int rows, int x_stride, int y_stride,
                                        int act, int split, const float* nw, float eps) {
    __shared__ float red[MMV_WARPS][2 * O * R];
    if (N <= 0) return;
    const int w = threadIdx.x >> 5;
    const int o0 = (blockIdx.x * (MMV_WARPS / split) + w / split) * O;
    const int r0 = blockIdx.y * R;
    // Gate and up rows in one pass (their loads in flight together, x loaded once).
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const int ob = blockIdx.x * (MMV_WARPS / split) * O;
    mmv_prefetch(Wg, row_bytes, ob, (MMV_WARPS / split) * O, N);
    mmv_prefetch(Wu, row_bytes, ob, (MMV_WARPS / split) * O, N);
    pdl_begin();
    const u8* wrs[2 * O];
#pragma unroll
    for (int i = 0; i < O; i++) {
        const long at = (long)min(o0 + i, N - 1) * row_bytes;
        wrs[i] = Wg + at;
        wrs[O + i] = Wu + at;
    }
    float gu[2 * O * R], ss[R];
    mmv_dots_rows<T, R, 2 * O>(wrs, x, K, rows, x_stride, r0, w % split, split, gu, nw,
                               nw ? ss : nullptr);
    const float* g = gu;
    const float* u = gu + O * R;
    mmv_merge<2 * O * R>(gu, split, red);
    if (nw) {
        __syncthreads();
        mmv_merge<R>(ss, split, (float(*)[R])red);
    }
    if ((threadIdx.x & 31) != 0 || w % split != 0) return;
#pragma unroll
    for (int i = 0; i < O; i++) {
        const int o = o0 + i;
        if (o >= N) break;
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r0 + r < rows) {
                float gv = g[i * R + r], uv = u[i * R + r];
                if (nw) {
                    float sc = rsqrtf(ss[r] / (float)K + eps);
                    gv *= sc;
                    uv *= sc;
                }
                y[(long)(r0 + r) * y_stride + o] = glu_act(act, gv, uv);
            }
        }
    }
}

// Expert matmul: for row i (blockIdx.z) and slot j (blockIdx.y), expert e = ids[i*k + j]:
// out[i][j*N + o] = W_e[o] . x_j + bias_e[o], where x_j is row i of x (x_slots == 0) or its
// slot j (x_slots == 1, x has k*K columns).
// An expert id outside 0..n_expert (ids come from the device) sets `*err` and leaves zeros.
template <int T>
__device__ __forceinline__ void mmv_exp(const u8* W, const float* bias, const float* ids,
                                        const float* x, float* y, int K, int N, int k,
                                        int n_expert, int x_slots, int x_stride, int y_stride,
                                        int* err) {
    pdl_begin();
    int o = blockIdx.x * MMV_WARPS + (threadIdx.x >> 5);
    if (o >= N) return;
    int i = blockIdx.z, j = blockIdx.y;
    float ef = ids[(long)i * k + j];
    if (!(ef >= 0.0f && ef < (float)n_expert)) {
        if ((threadIdx.x & 31) == 0) {
            y[(long)i * y_stride + (long)j * N + o] = 0.0f;
            atomicExch(err, 1);
        }
        return;
    }
    int e = (int)ef;
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const u8* We = W + (long)e * N * row_bytes;
    const float* xi = x + (long)i * x_stride + (x_slots ? (long)j * K : 0);
    float* yi = y + (long)i * y_stride + (long)j * N;
    float acc[1];
    mmv_dots<T, 1>(We, xi, K, 1, 0, 0, o, 0, 1, acc);
    if ((threadIdx.x & 31) == 0) yi[o] = bias ? acc[0] + bias[(long)e * N + o] : acc[0];
}

// Kernels `mmv_{type}_r{R}` and `mmv_glu_{type}_r{R}`: one output per warp, but four (two for
// glu) at 16 rows, where x loads rather than weight loads bound the kernel (the same bits).
#define MMV_K(NAME, T, R, O, SUFFIX)                                                           \
    extern "C" __global__ void __launch_bounds__(128) mmv_##NAME##_r##SUFFIX(                 \
        const u8* W, const float* x, float* y, int K, int N, int rows, int xs, int ys,         \
        const float* bias, int accumulate, int split) {                                        \
        mmv<T, R, O>(W, x, y, K, N, rows, xs, ys, bias, accumulate, split);                    \
    }
#define MMV_GLU_K(NAME, T, R, O, SUFFIX)                                                       \
    extern "C" __global__ void __launch_bounds__(128) mmv_glu_##NAME##_r##SUFFIX(             \
        const u8* Wg, const u8* Wu, const float* x, float* y, int K, int N, int rows, int xs,  \
        int ys, int act, int split, const float* nw, float eps) {                              \
        mmv_glu<T, R, O>(Wg, Wu, x, y, K, N, rows, xs, ys, act, split, nw, eps);               \
    }
#define MMV_R(NAME, T, R) MMV_K(NAME, T, R, 1, R) MMV_GLU_K(NAME, T, R, 1, R)

#define MMV_INST(NAME, T)                                                                      \
    MMV_R(NAME, T, 1)                                                                          \
    MMV_R(NAME, T, 2)                                                                          \
    MMV_R(NAME, T, 4)                                                                          \
    MMV_R(NAME, T, 8)                                                                          \
    MMV_K(NAME, T, 16, 4, 16)                                                                  \
    MMV_GLU_K(NAME, T, 16, 2, 16)                                                              \
    extern "C" __global__ void __launch_bounds__(128) mmv_exp_##NAME(                         \
        const u8* W, const float* bias, const float* ids, const float* x, float* y, int K,     \
        int N, int k, int n_expert, int x_slots, int xs, int ys, int* err) {                   \
        mmv_exp<T>(W, bias, ids, x, y, K, N, k, n_expert, x_slots, xs, ys, err);               \
    }                                                                                          \
    extern "C" __global__ void embed_##NAME(const u8* W, const int* ids, float* out, int K,    \
                                            int n_rows_table) {                                \
        pdl_begin();                                                                           \
        int i = blockIdx.x;                                                                    \
        int id = ids[i];                                                                       \
        if (id < 0 || id >= n_rows_table) id = 0;                                              \
        const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;                 \
        for (int c = threadIdx.x; c < (K >> 5); c += blockDim.x) {                             \
            float w[32];                                                                       \
            deq32<T>(W + (long)id * row_bytes + (long)(c / QT<T>::SUBS) * QT<T>::BYTES,        \
                     c % QT<T>::SUBS, w);                                                      \
            float* o = out + (long)i * K + (c << 5);                                           \
            for (int j = 0; j < 32; j++) o[j] = w[j];                                          \
        }                                                                                      \
    }

#if KILN_IN(0)
MMV_INST(f32, T_F32)
MMV_INST(f16, T_F16)
MMV_INST(bf16, T_BF16)
MMV_INST(q4_0, T_Q4_0)
#endif
#if KILN_IN(1)
MMV_INST(q4_1, T_Q4_1)
MMV_INST(q5_0, T_Q5_0)
MMV_INST(q5_1, T_Q5_1)
MMV_INST(q8_0, T_Q8_0)
#endif
#if KILN_IN(2)
MMV_INST(mxfp4, T_MXFP4)
MMV_INST(q2_k, T_Q2_K)
MMV_INST(q3_k, T_Q3_K)
#endif
#if KILN_IN(3)
MMV_INST(q4_k, T_Q4_K)
MMV_INST(q5_k, T_Q5_K)
MMV_INST(q6_k, T_Q6_K)
#endif

// mmv_dots for a weight type known only at run time (one switch per call, so segments of
// different types can share a launch).
template <int R, int O>
__device__ __forceinline__ void mmv_dots_any(int type, const u8* W, const float* x, int K,
                                             int rows, int x_stride, int r0, int o, int slice,
                                             int split, float* acc, const float* nw,
                                             float* ss, int last) {
#define MMV_CASE(T)                                                                            \
    case T:                                                                                    \
        mmv_dots<T, R, O>(W, x, K, rows, x_stride, r0, o, slice, split, acc, nw, ss, last);    \
        break;
    switch (type) {
        MMV_CASE(T_F32) MMV_CASE(T_F16) MMV_CASE(T_BF16) MMV_CASE(T_Q4_0) MMV_CASE(T_Q4_1)
        MMV_CASE(T_Q5_0) MMV_CASE(T_Q5_1) MMV_CASE(T_Q8_0) MMV_CASE(T_MXFP4) MMV_CASE(T_Q2_K)
        MMV_CASE(T_Q3_K) MMV_CASE(T_Q4_K) MMV_CASE(T_Q5_K) MMV_CASE(T_Q6_K)
        default:
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (ss) ss[r] = 0.0f;
#pragma unroll
                for (int i = 0; i < O; i++) acc[i * R + r] = 0.0f;
            }
    }
#undef MMV_CASE
}

// Up to three projections of the same input in one launch (queries, keys, values): segment s
// owns `nblk_s` consecutive blocks and computes y_s = W_s.x (+ bias_s) exactly as `mmv` with
// its own split would, so the results equal three separate launches bit for bit. With `nw`,
// x is first RMS-normed with weight nw (and `eps`): the norm is fused.
#define MMV_SEG_PARAMS(s)                                                                      \
    const u8 *W##s, const float *b##s, float *y##s, int t##s, int n##s, int ys##s, int sp##s,  \
        int nb##s
template <int R, int O>
__device__ __forceinline__ void mmv_seg(const float* x, int K, int rows, int xs,
                                        const float* nw, float eps, MMV_SEG_PARAMS(0),
                                        MMV_SEG_PARAMS(1), MMV_SEG_PARAMS(2)) {
    __shared__ float red[MMV_WARPS][O * R];
    int b = blockIdx.x;
    const u8* W = W0; const float* bias = b0; float* y = y0;
    int type = t0, N = n0, ys = ys0, split = sp0;
    if (b >= nb0) {
        b -= nb0;
        W = W1; bias = b1; y = y1; type = t1; N = n1; ys = ys1; split = sp1;
        if (b >= nb1) {
            b -= nb1;
            W = W2; bias = b2; y = y2; type = t2; N = n2; ys = ys2; split = sp2;
        }
    }
    if (N <= 0) return;
    const int w = threadIdx.x >> 5;
    const int o0 = (b * (MMV_WARPS / split) + w / split) * O;
    const int r0 = blockIdx.y * R;
    mmv_prefetch(W, qrow_bytes(type, K), b * (MMV_WARPS / split) * O, (MMV_WARPS / split) * O,
                 N);
    pdl_begin();
    float acc[O * R], ss[R];
    mmv_dots_any<R, O>(type, W, x, K, rows, xs, r0, min(o0, N - 1), w % split, split, acc, nw,
                       nw ? ss : nullptr, N - 1);
    mmv_merge<O * R>(acc, split, red);
    if (nw) {
        __syncthreads();
        mmv_merge<R>(ss, split, (float(*)[R])red);
    }
    if ((threadIdx.x & 31) != 0 || w % split != 0) return;
    mmv_store<R, O>(acc, nw ? ss : nullptr, K, eps, o0, N, r0, rows, y, ys, bias, 0);
}

// `mmv_seg_r{R}`: one output per warp, four at 16 rows (the same bits).
#define MMV_SEG_R(R, O, SUFFIX)                                                                \
    extern "C" __global__ void __launch_bounds__(128) mmv_seg_r##SUFFIX(                      \
        const float* x, int K, int rows, int xs, const float* nw, float eps,                   \
        MMV_SEG_PARAMS(0), MMV_SEG_PARAMS(1), MMV_SEG_PARAMS(2)) {                             \
        mmv_seg<R, O>(x, K, rows, xs, nw, eps, W0, b0, y0, t0, n0, ys0, sp0, nb0, W1, b1, y1,  \
                      t1, n1, ys1, sp1, nb1, W2, b2, y2, t2, n2, ys2, sp2, nb2);               \
    }
#if KILN_IN(4)
MMV_SEG_R(1, 1, 1)
MMV_SEG_R(2, 1, 2)
MMV_SEG_R(4, 1, 4)
MMV_SEG_R(8, 1, 8)
MMV_SEG_R(16, 4, 16)
#endif
