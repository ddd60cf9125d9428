// Norms, element-wise arithmetic, rotary embeddings, gated activations and row gathers over
// f32 activations `[rows x cols]` (row-major, `cols` the row stride).

// One warp per group of `g` columns: out = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int rows, int cols,
                                    int g, float eps) {
    pdl_begin();
    long gid = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    int per_row = cols / g;
    if (gid >= (long)rows * per_row) return;
    long base = (gid / per_row) * cols + (gid % per_row) * g;
    const float* xr = x + base;
    float s = 0.0f;
#pragma unroll 4
    for (int i = lane; i < g; i += 32) s = fmaf(xr[i], xr[i], s);
    s = warp_sum(s);
    float r = rsqrtf(s / (float)g + eps);
#pragma unroll 4
    for (int i = lane; i < g; i += 32) out[base + i] = xr[i] * r * w[i];
}

// One block per row, for norms over whole long rows: out = x / sqrt(mean(x^2) + eps) * w.
// The block's threads load the row at once instead of one warp walking it.
extern "C" __global__ void __launch_bounds__(256)
rms_norm_row(const float* x, const float* w, float* out, int cols, float eps) {
    pdl_begin();
    __shared__ float red[32];
    const float* xr = x + (long)blockIdx.x * cols;
    float* orow = out + (long)blockIdx.x * cols;
    float s = 0.0f;
#pragma unroll 4
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
    s = block_sum(s, red);
    float r = rsqrtf(s / (float)cols + eps);
#pragma unroll 4
    for (int i = threadIdx.x; i < cols; i += blockDim.x) orow[i] = xr[i] * r * w[i];
}

extern "C" __global__ void add(float* x, const float* y, long n) {
    pdl_begin();
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" __global__ void add_bias(float* x, const float* b, int cols, long n) {
    pdl_begin();
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += b[i % cols];
}

extern "C" __global__ void scale(float* x, float s, long n) {
    pdl_begin();
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// out row i = x row idx[i].
extern "C" __global__ void gather_rows(const float* x, const int* idx, float* out, int cols) {
    pdl_begin();
    int i = blockIdx.x;
    const float* src = x + (long)idx[i] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)i * cols + c] = src[c];
}

// Rotary embeddings, ggml semantics (see the SDK's `Rope` and `Yarn`): rotates pair i of the
// head at `hp` for position `pos` and returns the pair's dims in *a, *b. The angle is computed
// in double precision, then reduced.
__device__ __forceinline__ void rope_pair(float* hp, int i, int pos, int n_rot, int neox,
                                          float base, float freq_scale, int yarn,
                                          float ext_factor, float low, float span, float mscale,
                                          int* a, int* b) {
    double theta = (double)pos * exp2(-2.0 * (double)i / (double)n_rot * log2((double)base));
    double ang;
    float m = 1.0f;
    if (!yarn) {
        ang = theta * (double)freq_scale;
    } else {
        double interp = (double)freq_scale * theta;
        if (ext_factor != 0.0f) {
            float y = ((float)i - low) / span;
            float mix = (1.0f - fminf(fmaxf(y, 0.0f), 1.0f)) * ext_factor;
            ang = interp * (1.0 - (double)mix) + theta * (double)mix;
        } else {
            ang = interp;
        }
        m = mscale;
    }
    ang = fmod(ang, 6.283185307179586);
    float c = cosf((float)ang) * m, s = sinf((float)ang) * m;
    const int half = n_rot / 2;
    *a = neox ? i : 2 * i;
    *b = neox ? i + half : 2 * i + 1;
    float x0 = hp[*a], xb = hp[*b];
    hp[*a] = x0 * c - xb * s;
    hp[*b] = x0 * s + xb * c;
}

// Thread t of a rope launch (one thread per pair of one head of one row; x2's `h2` heads come
// after x1's `h1`): sets its pair *i, row *r and head *h, and returns the head's values.
__device__ __forceinline__ float* rope_head(long t, int half, int h1, int h2, float* x1, int cols1,
                                            float* x2, int cols2, int head_dim, int* i, int* r,
                                            int* h) {
    *i = (int)(t % half);
    long rh = t / half;
    *h = (int)(rh % (h1 + h2));
    *r = (int)(rh / (h1 + h2));
    return *h < h1 ? x1 + (long)*r * cols1 + (long)*h * head_dim
                   : x2 + (long)*r * cols2 + (long)(*h - h1) * head_dim;
}

// Rotary embeddings of one or two tensors at the same positions (x2 null: one). One thread per
// pair of one head of one row.
extern "C" __global__ void rope(float* x1, int cols1, float* x2, int cols2, const int* pos,
                                int rows, int head_dim, int n_rot, int neox, float base,
                                float freq_scale, int yarn, float ext_factor, float low,
                                float span, float mscale) {
    pdl_begin();
    int half = n_rot / 2;
    int h1 = cols1 / head_dim, h2 = x2 ? cols2 / head_dim : 0;
    long t = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long)rows * (h1 + h2) * half) return;
    int i, r, h;
    float* hp = rope_head(t, half, h1, h2, x1, cols1, x2, cols2, head_dim, &i, &r, &h);
    int a, b;
    rope_pair(hp, i, pos[r], n_rot, neox, base, freq_scale, yarn, ext_factor, low, span, mscale,
              &a, &b);
}

// gate = act(gate) * up (see glu_act).
extern "C" __global__ void glu(float* g, const float* u, int act, long n) {
    pdl_begin();
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] = glu_act(act, g[i], u[i]);
}

// Mixture-of-experts routing: one warp per row; the k largest logits (ties to the lower
// index), in decreasing order, and their softmax.
extern "C" __global__ void moe_route(const float* logits, float* ids, float* wts, int rows,
                                     int n_expert, int k) {
    pdl_begin();
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* l = logits + (long)row * n_expert;
    float best_v[32];
    int chosen_mask_words = 0;
    (void)chosen_mask_words;
    // Selected indices so far, kept by every lane.
    int sel[32];
    for (int j = 0; j < k && j < 32; j++) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
        for (int e = lane; e < n_expert; e += 32) {
            bool taken = false;
            for (int q = 0; q < j; q++) taken |= (sel[q] == e);
            float v = nan_to_ninf(l[e]);
            if (!taken && (v > bv || (v == bv && e < bi))) { bv = v; bi = e; }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (bi == 0x7fffffff) bi = 0;
        sel[j] = bi;
        best_v[j] = bv;
    }
    if (lane == 0) {
        float m = best_v[0];
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += expf(best_v[j] - m);
        for (int j = 0; j < k; j++) {
            ids[(long)row * k + j] = (float)sel[j];
            wts[(long)row * k + j] = expf(best_v[j] - m) / sum;
        }
    }
}

// out[i] = sum_j w[i][j] * y[i][j*cols..], slots in order.
extern "C" __global__ void moe_combine(const float* y, const float* w, float* out, int rows,
                                       int cols, int k) {
    pdl_begin();
    long t = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long)rows * cols) return;
    int i = (int)(t / cols), c = (int)(t % cols);
    const float* yi = y + (long)i * k * cols;
    float s = w[(long)i * k] * yi[c];
    for (int j = 1; j < k; j++) s = fmaf(w[(long)i * k + j], yi[(long)j * cols + c], s);
    out[t] = s;
}
