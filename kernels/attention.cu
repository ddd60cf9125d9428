// Attention over an f16 KV cache: storing a step's keys and values, then split-K
// ("flash-decoding") attention in which a row's keys are cut into chunks of a fixed length
// that depends only on the context size, so a row's result never depends on the rest of the
// batch. Sinks (gpt-oss), sliding windows and soft-capping are supported.

struct RowPos { int seq; int pos; };

// K/V caches of a layer: [n_seq][n_ctx][width] f16.
extern "C" __global__ void kv_store(const float* k, const float* v, u16* kc, u16* vc,
                                    const RowPos* rows, int n_ctx, int kw, int vw) {
    int i = blockIdx.x;
    RowPos rp = rows[i];
    long ko = ((long)rp.seq * n_ctx + rp.pos) * kw;
    long vo = ((long)rp.seq * n_ctx + rp.pos) * vw;
    for (int c = threadIdx.x; c < kw; c += blockDim.x) kc[ko + c] = f2h(k[(long)i * kw + c]);
    for (int c = threadIdx.x; c < vw; c += blockDim.x) vc[vo + c] = f2h(v[(long)i * vw + c]);
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
    __shared__ int last;
    __shared__ float qs[ATT_MAX_HEAD];
    __shared__ float sc[ATT_THREADS];
    __shared__ float red[32];
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
    float acc0 = 0.0f, acc1 = 0.0f;  // dims t and t + 128
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
        acc0 *= f;
        acc1 *= f;
        m = nm;
        __syncthreads();
        int n = min(ATT_THREADS, end - tile);
        for (int j = 0; j < n; j++) {
            const u16* vr = vbase + (long)(tile + j) * vw;
            float pj = sc[j];
            if (t < hv) acc0 = fmaf(pj, h2f(vr[t]), acc0);
            if (t + ATT_THREADS < hv) acc1 = fmaf(pj, h2f(vr[t + ATT_THREADS]), acc1);
        }
        __syncthreads();
    }
    float* mine = part + (((long)r * n_head + h) * max_splits + z) * (hv + 2);
    if (t == 0) { mine[0] = m; mine[1] = s; }
    if (t < hv) mine[2 + t] = acc0;
    if (t + ATT_THREADS < hv) mine[2 + t + ATT_THREADS] = acc1;
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
