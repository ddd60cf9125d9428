// Logit outputs on the device: bans, log-sum-exp, the target logit, and the candidates of a
// top-N (every value at or above the bin of the N-th largest in a 4096-bin histogram of the
// order-preserving keys), so only those cross to the host.

// Per output row: bans[off[i]..off[i+1]] set to -inf.
extern "C" __global__ void ban(float* logits, int vocab, const int* ids, const int* off) {
    pdl_begin();
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
// Candidates per row that also go to the small `fast` buffer the host copies with the stats.
#define OUT_FAST 512

// The statistics run over a row in three launches, each spread over `gridDim.y` blocks per
// row so the whole GPU reads the logits:
// 1. stats_part: each block's slice gives a (max, sum of exp) pair and adds its histogram of
//    order keys (top 12 bits) to the row's global histogram;
// 2. stats_final: one block per row merges the pairs into the log-sum-exp, reads the target
//    logit, finds the histogram bin of the N-th largest value (and zeroes the histogram for
//    the next step);
// 3. stats_cands: the slices write every value at or above that bin as a candidate.
// req[i] = {top_n, target}; stats[i] = {lse, target logit, candidate count (an int's bits),
// threshold bin}; candidates: (value, id) pairs, the first OUT_FAST in `fast`, all (up to
// `cap`) in cand_v/cand_i.

__device__ __forceinline__ void out_slice(int vocab, int* lo, int* hi) {
    int len = (vocab + gridDim.y - 1) / gridDim.y;
    *lo = min(vocab, (int)blockIdx.y * len);
    *hi = min(vocab, *lo + len);
}

extern "C" __global__ void __launch_bounds__(256)
stats_part(const float* logits, int vocab, const int* req, float* part, u32* hist) {
    pdl_begin();
    __shared__ float red[32];
    __shared__ u32 h[OUT_BINS];
    const int i = blockIdx.x, t = threadIdx.x;
    const float* row = logits + (long)i * vocab;
    int lo, hi;
    out_slice(vocab, &lo, &hi);
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
        part[((long)i * gridDim.y + blockIdx.y) * 2] = m;
        part[((long)i * gridDim.y + blockIdx.y) * 2 + 1] = s;
    }
    if (req[2 * i] <= 0) return;
    for (int b = t; b < OUT_BINS; b += blockDim.x) h[b] = 0;
    __syncthreads();
    for (int c = lo + t; c < hi; c += blockDim.x) atomicAdd(&h[order_key(row[c]) >> 20], 1u);
    __syncthreads();
    u32* gh = hist + (long)i * OUT_BINS;
    for (int b = t; b < OUT_BINS; b += blockDim.x)
        if (h[b]) atomicAdd(&gh[b], h[b]);
}

// One block of 1024 threads per row; `parts` pairs per row from stats_part.
extern "C" __global__ void __launch_bounds__(1024)
stats_final(const float* logits, int vocab, const int* req, const float* part, int parts,
            u32* hist, float* stats) {
    pdl_begin();
    __shared__ float red[32];
    __shared__ u32 wsum[32];
    const int i = blockIdx.x, t = threadIdx.x, lane = t & 31, w = t >> 5;
    const float* p = part + (long)i * parts * 2;
    float pm = t < parts ? p[2 * t] : NEG_INF;
    float M = block_max(pm, red);
    float ps = 0.0f;
    if (t < parts && pm > NEG_INF && M < __int_as_float(0x7f800000)) ps = p[2 * t + 1] * expf(pm - M);
    float S = block_sum(ps, red);
    int top_n = req[2 * i], target = req[2 * i + 1];
    if (t == 0) {
        float lse = (M > NEG_INF && M < __int_as_float(0x7f800000)) ? M + logf(S) : M;
        stats[4 * i] = lse;
        stats[4 * i + 1] = target >= 0 ? logits[(long)i * vocab + target] : 0.0f;
        stats[4 * i + 2] = __int_as_float(0);
        stats[4 * i + 3] = __int_as_float(OUT_BINS);
    }
    if (top_n <= 0) return;
    // Thread t holds bins 4t..4t+3; suffix sums (counts of values in bins >= b) by a scan
    // over the threads from the top.
    u32* gh = hist + (long)i * OUT_BINS;
    uint4 hb = ((const uint4*)gh)[t];
    u32 own = hb.x + hb.y + hb.z + hb.w;
    u32 incl = own;  // sum over threads t..(warp end)
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u32 v = __shfl_down_sync(0xffffffffu, incl, o);
        if (lane + o < 32) incl += v;
    }
    if (lane == 0) wsum[w] = incl;
    __syncthreads();
    u32 above = 0;  // threads of later warps
    for (int j = w + 1; j < 32; j++) above += wsum[j];
    u32 after = above + incl - own;  // values in bins above 4t+3
    int best = 0;
    u32 acc = after;
    u32 hv[4] = {hb.x, hb.y, hb.z, hb.w};
#pragma unroll
    for (int k = 3; k >= 0; k--) {
        acc += hv[k];
        int b = 4 * t + k;
        if (b >= 1 && acc >= (u32)top_n && best == 0) best = b;
    }
    // The largest such bin over the block.
    float bf = block_max((float)best, red);
    ((uint4*)gh)[t] = make_uint4(0, 0, 0, 0);
    if (t == 0) stats[4 * i + 3] = __int_as_float((int)bf);
}

extern "C" __global__ void __launch_bounds__(256)
stats_cands(const float* logits, int vocab, const int* req, float* stats, float* fast,
            float* cand_v, int* cand_i, int cap) {
    pdl_begin();
    const int i = blockIdx.x, t = threadIdx.x;
    if (req[2 * i] <= 0) return;
    const float* row = logits + (long)i * vocab;
    u32 th = (u32)__float_as_int(stats[4 * i + 3]);
    u32* count = (u32*)(stats + 4 * i + 2);
    int lo, hi;
    out_slice(vocab, &lo, &hi);
    for (int c = lo + t; c < hi; c += blockDim.x) {
        float v = row[c];
        if ((order_key(v) >> 20) >= th) {
            u32 at = atomicAdd(count, 1u);
            if (at < OUT_FAST) {
                fast[((long)i * OUT_FAST + at) * 2] = v;
                fast[((long)i * OUT_FAST + at) * 2 + 1] = __int_as_float(c);
            }
            if (at < (u32)cap) {
                cand_v[(long)i * cap + at] = v;
                cand_i[(long)i * cap + at] = c;
            }
        }
    }
}
