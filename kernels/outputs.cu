// Logit outputs on the device: bans and allow-lists, log-sum-exp, the target logit, and the
// candidates of a top-N (every value at or above the bin of the N-th largest in a 4096-bin
// histogram of order-preserving keys), so only those cross to the host. Each row is spread
// over many blocks: partial maxima, sums and histograms, then a per-row pass that finds the
// threshold, then the collection of the candidates.

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
#define OUT_SPLIT 64

// grid (OUT_SPLIT, rows), 256 threads. part[row][split] = (max, sum of exp(x - max));
// hist[row][bin] += counts (only rows with top_n > 0; `hist` zeroed before).
extern "C" __global__ void __launch_bounds__(256)
row_partial(const float* logits, int vocab, const int* req, float* part, u32* hist) {
    __shared__ float red[32];
    __shared__ u32 h[OUT_BINS];
    const int i = blockIdx.y, b = blockIdx.x, t = threadIdx.x;
    const float* row = logits + (long)i * vocab;
    int per = (vocab + OUT_SPLIT - 1) / OUT_SPLIT;
    int lo = b * per, hi = min(vocab, lo + per);
    float m = NEG_INF;
    for (int c = lo + t; c < hi; c += blockDim.x) {
        float v = row[c];
        if (v == v) m = fmaxf(m, v);
    }
    m = block_max(m, red);
    float s = 0.0f;
    if (m > NEG_INF && m < __int_as_float(0x7f800000)) {
        for (int c = lo + t; c < hi; c += blockDim.x) {
            float v = row[c];
            if (v == v) s += expf(v - m);
        }
    }
    s = block_sum(s, red);
    if (t == 0) {
        part[((long)i * OUT_SPLIT + b) * 2] = m;
        part[((long)i * OUT_SPLIT + b) * 2 + 1] = s;
    }
    if (req[2 * i] <= 0) return;
    for (int k = t; k < OUT_BINS; k += blockDim.x) h[k] = 0;
    __syncthreads();
    for (int c = lo + t; c < hi; c += blockDim.x) atomicAdd(&h[order_key(row[c]) >> 20], 1u);
    __syncthreads();
    u32* gh = hist + (long)i * OUT_BINS;
    for (int k = t; k < OUT_BINS; k += blockDim.x)
        if (h[k]) atomicAdd(&gh[k], h[k]);
}

// grid (rows), 32 threads. stats[i] = {lse, target logit, candidate count (set by
// row_collect), threshold bin (as int bits)}; `count` zeroed.
extern "C" __global__ void row_final(const float* logits, int vocab, const int* req,
                                     const float* part, const u32* hist, float* stats,
                                     u32* count) {
    const int i = blockIdx.x, lane = threadIdx.x;
    const float* p = part + (long)i * OUT_SPLIT * 2;
    float m = NEG_INF;
    for (int b = lane; b < OUT_SPLIT; b += 32) m = fmaxf(m, p[2 * b]);
    m = warp_max(m);
    float s = 0.0f;
    if (m > NEG_INF && m < __int_as_float(0x7f800000)) {
        for (int b = lane; b < OUT_SPLIT; b += 32)
            if (p[2 * b] > NEG_INF) s += p[2 * b + 1] * expf(p[2 * b] - m);
    }
    s = warp_sum(s);
    int top_n = req[2 * i], target = req[2 * i + 1];
    // The threshold bin: lane l sums bins [128 l, 128 l + 128); a suffix scan over lanes finds
    // the lane holding the N-th largest, which then walks its bins from the top.
    int th = 0;
    if (top_n > 0) {
        const u32* h = hist + (long)i * OUT_BINS;
        u32 mine = 0;
        for (int k = 0; k < 128; k++) mine += h[lane * 128 + k];
        u32 suffix = mine;  // sum of lanes >= lane
        for (int o = 1; o < 32; o <<= 1) {
            u32 v = __shfl_down_sync(0xffffffffu, suffix, o);
            if (lane + o < 32) suffix += v;
        }
        u32 above = suffix - mine;  // lanes > lane
        bool here = above < (u32)top_n && suffix >= (u32)top_n;
        u32 ballot = __ballot_sync(0xffffffffu, here);
        int owner = ballot ? __ffs(ballot) - 1 : 0;
        if (lane == owner && ballot) {
            u32 acc = above;
            int k = 127;
            for (; k > 0; k--) {
                acc += h[lane * 128 + k];
                if (acc >= (u32)top_n) break;
            }
            th = lane * 128 + k;
        }
        th = __shfl_sync(0xffffffffu, th, owner);
    }
    if (lane == 0) {
        float lse = (m > NEG_INF && m < __int_as_float(0x7f800000)) ? m + logf(s) : m;
        stats[4 * i] = lse;
        stats[4 * i + 1] = target >= 0 ? logits[(long)i * vocab + target] : 0.0f;
        stats[4 * i + 3] = __int_as_float(th);
        count[i] = 0;
    }
}

// grid (OUT_SPLIT, rows), 256 threads: the candidates at or above the threshold bin, at most
// `cap` per row (the count goes on).
extern "C" __global__ void __launch_bounds__(256)
row_collect(const float* logits, int vocab, const int* req, const float* stats, u32* count,
            float* cand_v, int* cand_i, int cap) {
    const int i = blockIdx.y, b = blockIdx.x, t = threadIdx.x;
    if (req[2 * i] <= 0) return;
    const float* row = logits + (long)i * vocab;
    u32 th = (u32)__float_as_int(stats[4 * i + 3]);
    int per = (vocab + OUT_SPLIT - 1) / OUT_SPLIT;
    int lo = b * per, hi = min(vocab, lo + per);
    for (int c = lo + t; c < hi; c += blockDim.x) {
        float v = row[c];
        if ((order_key(v) >> 20) >= th) {
            u32 at = atomicAdd(&count[i], 1u);
            if (at < (u32)cap) {
                cand_v[(long)i * cap + at] = v;
                cand_i[(long)i * cap + at] = c;
            }
        }
    }
}
