// Attention over an f16 KV cache: storing a step's keys and values, then split-K
// ("flash-decoding") attention in which a row's keys are cut into chunks of a fixed length
// that depends only on the context size, so a row's result never depends on the rest of the
// batch. Sinks (gpt-oss), sliding windows and soft-capping are supported.

struct RowPos { int seq; int pos; };

// K/V caches of a layer: [n_seq][n_ctx][width] f16.
extern "C" __global__ void kv_store(const float* k, const float* v, u16* kc, u16* vc,
                                    const RowPos* rows, int n_ctx, int kw, int vw) {
    pdl_begin();
    int i = blockIdx.x;
    RowPos rp = rows[i];
    long ko = ((long)rp.seq * n_ctx + rp.pos) * kw;
    long vo = ((long)rp.seq * n_ctx + rp.pos) * vw;
    for (int c = threadIdx.x; c < kw; c += blockDim.x) kc[ko + c] = f2h(k[(long)i * kw + c]);
    for (int c = threadIdx.x; c < vw; c += blockDim.x) vc[vo + c] = f2h(v[(long)i * vw + c]);
}

// `rope` of q and k, then `kv_store`, in one launch (the same bits): threads
// [0, rows * heads * n_rot / 2) rotate a pair (and store a key pair), the next
// rows * (kw + vw) store the keys' unrotated dims and the values.
extern "C" __global__ void rope_kv_store(float* q, int qcols, float* k, int kw, const float* v,
                                         int vw, const int* pos, int rows, int head_dim,
                                         int n_rot, int neox, float base, float freq_scale,
                                         int yarn, float ext_factor, float low, float span,
                                         float mscale, u16* kc, u16* vc, const RowPos* rp,
                                         int n_ctx) {
    pdl_begin();
    const int half = n_rot / 2;
    const int hq = qcols / head_dim, hk = kw / head_dim;
    const long n_rope = (long)rows * (hq + hk) * half;
    long t = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n_rope) {
        int i, r, h;
        float* hp = rope_head(t, half, hq, hk, q, qcols, k, kw, head_dim, &i, &r, &h);
        int a, b;
        rope_pair(hp, i, pos[r], n_rot, neox, base, freq_scale, yarn, ext_factor, low, span,
                  mscale, &a, &b);
        if (h >= hq) {
            RowPos p = rp[r];
            u16* dst = kc + ((long)p.seq * n_ctx + p.pos) * kw + (long)(h - hq) * head_dim;
            dst[a] = f2h(hp[a]);
            dst[b] = f2h(hp[b]);
        }
        return;
    }
    t -= n_rope;
    if (t >= (long)rows * (kw + vw)) return;
    const int r = (int)(t / (kw + vw)), c = (int)(t % (kw + vw));
    const RowPos p = rp[r];
    if (c < kw) {
        if (c % head_dim >= n_rot)
            kc[((long)p.seq * n_ctx + p.pos) * kw + c] = f2h(k[(long)r * kw + c]);
    } else {
        vc[((long)p.seq * n_ctx + p.pos) * vw + (c - kw)] = f2h(v[(long)r * vw + (c - kw)]);
    }
}

#define ATT_THREADS 128
#define ATT_MAX_HEAD 256

// grid (n_head, rows, max_splits). Partial results: [rows][n_head][max_splits][hv + 2]
// (max, sum, acc[hv]). The last block of a (row, head) to finish (counted in `cnt`, which it
// resets) merges the partial results, and the head's sink, into `out`.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_split(const float* q, const u16* kc, const u16* vc, const RowPos* rows, float* part,
           int n_ctx, int n_head, int n_head_kv, int hk, int hv, float scale, int window,
           float softcap, int chunk, int max_splits, int* cnt, const float* sinks, float* out) {
    pdl_begin();
    __shared__ int last;
    __shared__ float qs[ATT_MAX_HEAD];
    __shared__ float sc[ATT_THREADS];
    __shared__ float red[32];
    __shared__ float vsum[ATT_THREADS / 32][ATT_MAX_HEAD];
    const int h = blockIdx.x, r = blockIdx.y, z = blockIdx.z, t = threadIdx.x;
    RowPos rp = rows[r];
    int hi = rp.pos + 1;
    int lo = window > 0 ? max(0, hi - window) : 0;
    int start = lo + z * chunk;
    if (start >= hi) return;
    int end = min(hi, start + chunk);
    int kvh = h / (n_head / n_head_kv);
    const int kw = n_head_kv * hk, vw = n_head_kv * hv;
    const float* qr = q + (long)r * n_head * hk + (long)h * hk;
    for (int d = t; d < hk; d += ATT_THREADS) qs[d] = qr[d];
    __syncthreads();
    const u16* kbase = kc + (long)rp.seq * n_ctx * kw + (long)kvh * hk;
    const u16* vbase = vc + (long)rp.seq * n_ctx * vw + (long)kvh * hv;
    float m = NEG_INF, s = 0.0f;
    // Values: warp w takes keys w, w + 4, ... of a tile; lane l holds dims 2l + 64i, i < 4.
    const int w = t >> 5, lane = t & 31;
    float2 acc[4];
#pragma unroll
    for (int i = 0; i < 4; i++) acc[i] = make_float2(0.0f, 0.0f);
    for (int tile = start; tile < end; tile += ATT_THREADS) {
        int key = tile + t;
        float score = NEG_INF;
        if (key < end) {
            const uint4* kp = (const uint4*)(kbase + (long)key * kw);
            float dot = 0.0f;
            for (int d8 = 0; d8 < (hk >> 3); d8++) {
                uint4 u = kp[d8];
                u32 a[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    dot = fmaf(qs[8 * d8 + 2 * j], h2f((u16)(a[j] & 0xffff)), dot);
                    dot = fmaf(qs[8 * d8 + 2 * j + 1], h2f((u16)(a[j] >> 16)), dot);
                }
            }
            score = dot * scale;
            if (softcap > 0.0f) score = softcap * tanhf(score / softcap);
        }
        float tmax = block_max(score, red);
        float nm = fmaxf(m, tmax);
        float p = key < end ? expf(score - nm) : 0.0f;
        sc[t] = p;
        float psum = block_sum(p, red);
        float f = expf(m - nm);  // 0 when m = -inf
        s = s * f + psum;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc[i].x *= f;
            acc[i].y *= f;
        }
        m = nm;
        __syncthreads();
        const int n = min(ATT_THREADS, end - tile);
#pragma unroll 4
        for (int j = w; j < n; j += ATT_THREADS / 32) {
            const u32* vr = (const u32*)(vbase + (long)(tile + j) * vw);
            const float pj = sc[j];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int d = 2 * lane + 64 * i;
                if (d < hv) {
                    u32 u = __ldg(vr + (d >> 1));
                    acc[i].x = fmaf(pj, h2f((u16)(u & 0xffff)), acc[i].x);
                    acc[i].y = fmaf(pj, h2f((u16)(u >> 16)), acc[i].y);
                }
            }
        }
        __syncthreads();
    }
    // The warps' sums, in warp order.
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int d = 2 * lane + 64 * i;
        if (d < hv) {
            vsum[w][d] = acc[i].x;
            vsum[w][d + 1] = acc[i].y;
        }
    }
    __syncthreads();
    float* mine = part + (((long)r * n_head + h) * max_splits + z) * (hv + 2);
    if (t == 0) { mine[0] = m; mine[1] = s; }
    for (int d = t; d < hv; d += ATT_THREADS) {
        float a = vsum[0][d];
#pragma unroll
        for (int ww = 1; ww < ATT_THREADS / 32; ww++) a += vsum[ww][d];
        mine[2 + d] = a;
    }
    const int n_used = (hi - lo + chunk - 1) / chunk;
    if (n_used > 1) {
        __threadfence();
        __syncthreads();
        if (t == 0) {
            int prev = atomicAdd(&cnt[r * n_head + h], 1);
            last = prev == n_used - 1;
            if (last) cnt[r * n_head + h] = 0;
        }
        __syncthreads();
        if (!last) return;
        __threadfence();
    } else {
        __syncthreads();
    }
    // Merge, in split order: the arithmetic depends only on the row's position and n_ctx.
    const float* p = part + ((long)r * n_head + h) * max_splits * (hv + 2);
    float M = sinks ? sinks[h] : NEG_INF;
    for (int zz = 0; zz < n_used; zz++) M = fmaxf(M, __ldcg(p + zz * (hv + 2)));
    float S = sinks ? expf(sinks[h] - M) : 0.0f;
    for (int zz = 0; zz < n_used; zz++)
        S += __ldcg(p + zz * (hv + 2) + 1) * expf(__ldcg(p + zz * (hv + 2)) - M);
    float inv = 1.0f / S;
    for (int d = t; d < hv; d += ATT_THREADS) {
        float a = 0.0f;
        for (int zz = 0; zz < n_used; zz++)
            a += __ldcg(p + zz * (hv + 2) + 2 + d) * expf(__ldcg(p + zz * (hv + 2)) - M);
        out[(long)r * n_head * hv + (long)h * hv + d] = a * inv;
    }
}
