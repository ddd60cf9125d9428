// Quantized matrix-vector products: y[r][o] = W[o] . x[r] for up to R rows per block.
//
// One warp computes one output feature for R rows. Lane l reads the 32-value chunks
// l, l+32, ... of the weight row, dequantizes each in registers, and accumulates its dot
// with every row; a butterfly reduction finishes. Every row's arithmetic is the same
// whatever R and the number of rows: results are batch-invariant, bit for bit.

#define MMV_WARPS 4

// The dot products of weight row `o` with rows r0..r0+R of x, reduced across the warp (every
// lane gets them).
template <int T, int R>
__device__ __forceinline__ void mmv_dots(const u8* __restrict__ W, const float* __restrict__ x,
                                         int K, int rows, int x_stride, int r0, int o,
                                         float* acc) {
    const int lane = threadIdx.x & 31;
    const int nchunks = K >> 5;
    const long row_bytes = (long)(nchunks / QT<T>::SUBS) * QT<T>::BYTES;
    const u8* wr = W + (long)o * row_bytes;
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int c = lane; c < nchunks; c += 32) {
        float w[32];
        deq32<T>(wr + (long)(c / QT<T>::SUBS) * QT<T>::BYTES, c % QT<T>::SUBS, w);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r0 + r < rows) {
                const float4* xv = (const float4*)(x + (long)(r0 + r) * x_stride + (c << 5));
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    float4 v = __ldg(xv + i);
                    s = fmaf(w[4 * i], v.x, s);
                    s = fmaf(w[4 * i + 1], v.y, s);
                    s = fmaf(w[4 * i + 2], v.z, s);
                    s = fmaf(w[4 * i + 3], v.w, s);
                }
                acc[r] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
}

template <int T, int R>
__device__ __forceinline__ void mmv_body(const u8* __restrict__ W, const float* __restrict__ x,
                                         float* __restrict__ y, int K, int N, int rows,
                                         int x_stride, int y_stride, int r0, int o) {
    float acc[R];
    mmv_dots<T, R>(W, x, K, rows, x_stride, r0, o, acc);
#pragma unroll
    for (int r = 0; r < R; r++)
        if ((threadIdx.x & 31) == 0 && r0 + r < rows) y[(long)(r0 + r) * y_stride + o] = acc[r];
}

// y = W.x (+ bias) (accumulate: y += W.x (+ bias), the residual sum of the caller).
template <int T, int R>
__device__ __forceinline__ void mmv(const u8* W, const float* x, float* y, int K, int N, int rows,
                                    int x_stride, int y_stride, const float* bias, int accumulate) {
    int o = blockIdx.x * MMV_WARPS + (threadIdx.x >> 5);
    if (o >= N) return;
    int r0 = blockIdx.y * R;
    float acc[R];
    mmv_dots<T, R>(W, x, K, rows, x_stride, r0, o, acc);
    if ((threadIdx.x & 31) != 0) return;
    float b = bias ? bias[o] : 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r0 + r < rows) {
            float v = bias ? acc[r] + b : acc[r];
            float* dst = y + (long)(r0 + r) * y_stride + o;
            *dst = accumulate ? *dst + v : v;
        }
    }
}

// y = act(Wg.x) * (Wu.x), both weights of type T.
template <int T, int R>
__device__ __forceinline__ void mmv_glu(const u8* Wg, const u8* Wu, const float* x, float* y,
                                        int K, int N, int rows, int x_stride, int y_stride,
                                        int act) {
    int o = blockIdx.x * MMV_WARPS + (threadIdx.x >> 5);
    if (o >= N) return;
    int r0 = blockIdx.y * R;
    float g[R], u[R];
    mmv_dots<T, R>(Wg, x, K, rows, x_stride, r0, o, g);
    mmv_dots<T, R>(Wu, x, K, rows, x_stride, r0, o, u);
    if ((threadIdx.x & 31) != 0) return;
#pragma unroll
    for (int r = 0; r < R; r++)
        if (r0 + r < rows) y[(long)(r0 + r) * y_stride + o] = glu_act(act, g[r], u[r]);
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
    mmv_body<T, 1>(We, xi, yi, K, N, 1, 0, 0, 0, o);
    if ((threadIdx.x & 31) == 0 && bias) yi[o] += bias[(long)e * N + o];
}

#define MMV_R(NAME, T, R)                                                                      \
    extern "C" __global__ void __launch_bounds__(128) mmv_##NAME##_r##R(                      \
        const u8* W, const float* x, float* y, int K, int N, int rows, int xs, int ys,         \
        const float* bias, int accumulate) {                                                   \
        mmv<T, R>(W, x, y, K, N, rows, xs, ys, bias, accumulate);                              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(128) mmv_glu_##NAME##_r##R(                  \
        const u8* Wg, const u8* Wu, const float* x, float* y, int K, int N, int rows, int xs,  \
        int ys, int act) {                                                                     \
        mmv_glu<T, R>(Wg, Wu, x, y, K, N, rows, xs, ys, act);                                  \
    }

#define MMV_INST(NAME, T)                                                                      \
    MMV_R(NAME, T, 1)                                                                          \
    MMV_R(NAME, T, 2)                                                                          \
    MMV_R(NAME, T, 4)                                                                          \
    MMV_R(NAME, T, 8)                                                                          \
    MMV_R(NAME, T, 16)                                                                         \
    extern "C" __global__ void __launch_bounds__(128) mmv_exp_##NAME(                         \
        const u8* W, const float* bias, const float* ids, const float* x, float* y, int K,     \
        int N, int k, int n_expert, int x_slots, int xs, int ys, int* err) {                   \
        mmv_exp<T>(W, bias, ids, x, y, K, N, k, n_expert, x_slots, xs, ys, err);               \
    }                                                                                          \
    extern "C" __global__ void embed_##NAME(const u8* W, const int* ids, float* out, int K,    \
                                            int n_rows_table) {                                \
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

MMV_INST(f32, T_F32)
MMV_INST(f16, T_F16)
MMV_INST(bf16, T_BF16)
MMV_INST(q4_0, T_Q4_0)
MMV_INST(q4_1, T_Q4_1)
MMV_INST(q5_0, T_Q5_0)
MMV_INST(q5_1, T_Q5_1)
MMV_INST(q8_0, T_Q8_0)
MMV_INST(mxfp4, T_MXFP4)
MMV_INST(q2_k, T_Q2_K)
MMV_INST(q3_k, T_Q3_K)
MMV_INST(q4_k, T_Q4_K)
MMV_INST(q5_k, T_Q5_K)
MMV_INST(q6_k, T_Q6_K)
