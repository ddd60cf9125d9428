// Logit outputs on the device: bans, log-sum-exp, the target logit, and the candidates of a
// top-N (every value at or above the bin of the N-th largest in a 4096-bin histogram of the
// order-preserving keys), so only those cross to the host.

// Per output row: bans[off[i]..off[i+1]] set to -inf.
extern "C" __global__ void ban(float* logits, int vocab, const int* ids, const int* off) {
    int i = blockIdx.x;
    for (int j = off[i] + threadIdx.x; j < off[i + 1]; j += blockDim.x)
        logits[(long)i * vocab + ids[j]] = NEG_INF;
}

__device__ __forceinline__ u32 order_key(float v) {
    v = nan_to_ninf(v);
    u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

#define OUT_BINS 4096

// One block of 1024 threads per row. req[i] = {top_n, target}; stats[i] = {lse, target
// logit, candidate count (as float bits of an int), unused}; candidates (value, id) pairs,
// at most `cap` per row (more: the count says so and the host reads the whole row).
extern "C" __global__ void __launch_bounds__(1024)
row_stats(const float* logits, int vocab, const int* req, float* stats, float* cand_v,
          int* cand_i, int cap) {
    __shared__ float red[32];
    __shared__ u32 hist[OUT_BINS];
    __shared__ u32 thresh;
    __shared__ u32 count;
    const int i = blockIdx.x, t = threadIdx.x;
    const float* row = logits + (long)i * vocab;
    int top_n = req[2 * i], target = req[2 * i + 1];
    float m = NEG_INF;
    for (int c = t; c < vocab; c += blockDim.x) {
        float v = row[c];
        if (v == v) m = fmaxf(m, v);
    }
    m = block_max(m, red);
    float s = 0.0f;
    if (m > NEG_INF && m < __int_as_float(0x7f800000)) {
        for (int c = t; c < vocab; c += blockDim.x) {
            float v = row[c];
            if (v == v) s += expf(v - m);
        }
    }
    s = block_sum(s, red);
    if (t == 0) {
        float lse = (m > NEG_INF && m < __int_as_float(0x7f800000)) ? m + logf(s) : m;
        stats[4 * i] = lse;
        stats[4 * i + 1] = target >= 0 ? row[target] : 0.0f;
        stats[4 * i + 2] = __int_as_float(0);
        stats[4 * i + 3] = 0.0f;
    }
    if (top_n <= 0) return;
    for (int b = t; b < OUT_BINS; b += blockDim.x) hist[b] = 0;
    if (t == 0) count = 0;
    __syncthreads();
    for (int c = t; c < vocab; c += blockDim.x) atomicAdd(&hist[order_key(row[c]) >> 20], 1u);
    __syncthreads();
    if (t == 0) {
        u32 acc = 0;
        int b = OUT_BINS - 1;
        for (; b > 0; b--) {
            acc += hist[b];
            if (acc >= (u32)top_n) break;
        }
        thresh = (u32)b;
    }
    __syncthreads();
    u32 th = thresh;
    for (int c = t; c < vocab; c += blockDim.x) {
        float v = row[c];
        if ((order_key(v) >> 20) >= th) {
            u32 at = atomicAdd(&count, 1u);
            if (at < (u32)cap) {
                cand_v[(long)i * cap + at] = v;
                cand_i[(long)i * cap + at] = c;
            }
        }
    }
    __syncthreads();
    if (t == 0) stats[4 * i + 2] = __int_as_float((int)count);
}
