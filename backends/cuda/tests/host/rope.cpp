// Runs `rope_kv_store` (kernels/attention.cu) on the CPU, thread by thread, and checks that it
// leaves q, k and the f16 caches exactly as `rope` followed by `kv_store` do, over shapes with
// grouped heads, partial rotation, both pair layouts and YaRN. No input; exit status 0 when
// every value matches, 1 (with the first difference on stderr) otherwise.
#include "kernel.h"
#define NEG_INF (-INFINITY)
struct float2 { float x, y; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float warp_sum(float v) { return v; }
static inline float warp_max(float v) { return v; }
static inline float block_sum(float v, float*) { return v; }
static inline float block_max(float v, float*) { return v; }
static inline float nan_to_ninf(float v) { return v != v ? NEG_INF : v; }
static inline float glu_act(int, float g, float u) { return g * u; }
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int) { return v; }
template <class T> static inline T __shfl_sync(unsigned, T v, int) { return v; }
// Round-to-nearest-even f32 -> f16 bits (normal and subnormal range; both paths use it).
static inline u16 f2h(float f) {
    u32 x;
    std::memcpy(&x, &f, 4);
    u32 s = (x >> 16) & 0x8000;
    int e = (int)((x >> 23) & 0xff) - 127 + 15;
    u32 m = x & 0x7fffff;
    if (e >= 31) return (u16)(s | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (u16)s;
        m |= 0x800000;
        int sh = 14 - e;
        u32 h = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (u16)(s | h);
    }
    u32 h = ((u32)e << 10) | (m >> 13), rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (u16)(s | h);
}
#include "../../../../kernels/elementwise.cu"
#include "../../../../kernels/attention.cu"

static float rnd(u32& s) {
    s = s * 1664525u + 1013904223u;
    return ((s >> 8) * (1.0f / 16777216.0f)) * 4.0f - 2.0f;
}

// Runs a kernel body over a 1-D grid of `blocks` x `threads`.
template <class F> static void grid(long blocks, int threads, F f) {
    blockDim.x = threads;
    for (long b = 0; b < blocks; b++) {
        blockIdx.x = (unsigned)b;
        for (int t = 0; t < threads; t++) {
            threadIdx.x = t;
            f();
        }
    }
}

static int check(int rows, int n_head, int n_kv, int hd, int n_rot, int neox, int yarn) {
    const int qcols = n_head * hd, kw = n_kv * hd, vw = n_kv * hd, n_ctx = 64, n_seq = 3;
    u32 s = 12345u + rows * 7 + n_rot;
    std::vector<float> q(rows * qcols), k(rows * kw), v(rows * vw);
    for (auto& x : q) x = rnd(s);
    for (auto& x : k) x = rnd(s);
    for (auto& x : v) x = rnd(s);
    std::vector<int> pos(rows);
    std::vector<RowPos> rp(rows);
    for (int r = 0; r < rows; r++) {
        rp[r].seq = r % n_seq;
        rp[r].pos = 5 + 3 * r;
        pos[r] = rp[r].pos;
    }
    const float base = 10000.0f, fs = 0.5f, ext = yarn ? 1.0f : 0.0f, low = 3.0f, span = 9.0f,
                ms = yarn ? 1.2f : 1.0f;
    std::vector<u16> kc1((long)n_seq * n_ctx * kw, 0x7e01), vc1((long)n_seq * n_ctx * vw, 0x7e01);
    std::vector<u16> kc2 = kc1, vc2 = vc1;
    std::vector<float> q1 = q, k1 = k, q2 = q, k2 = k;
    // rope, then kv_store.
    long n = (long)rows * (qcols + kw) / hd * (n_rot / 2);
    grid((n + 255) / 256 + (n == 0), 256, [&] {
        rope(q1.data(), qcols, k1.data(), kw, pos.data(), rows, hd, n_rot, neox, base, fs, yarn,
             ext, low, span, ms);
    });
    grid(rows, 128, [&] {
        kv_store(k1.data(), v.data(), kc1.data(), vc1.data(), rp.data(), n_ctx, kw, vw);
    });
    // The fused kernel.
    long nt = n + (long)rows * (kw + vw);
    grid((nt + 255) / 256, 256, [&] {
        rope_kv_store(q2.data(), qcols, k2.data(), kw, v.data(), vw, pos.data(), rows, hd, n_rot,
                      neox, base, fs, yarn, ext, low, span, ms, kc2.data(), vc2.data(), rp.data(),
                      n_ctx);
    });
    auto same = [&](const void* a, const void* b, size_t bytes, const char* what) {
        if (std::memcmp(a, b, bytes) == 0) return true;
        fprintf(stderr, "rows %d heads %d/%d dim %d rot %d neox %d yarn %d: %s differ\n", rows,
                n_head, n_kv, hd, n_rot, neox, yarn, what);
        return false;
    };
    return same(q1.data(), q2.data(), q1.size() * 4, "queries") &&
           same(k1.data(), k2.data(), k1.size() * 4, "keys") &&
           same(kc1.data(), kc2.data(), kc1.size() * 2, "key caches") &&
           same(vc1.data(), vc2.data(), vc1.size() * 2, "value caches");
}

int main() {
    int ok = 1;
    for (int neox = 0; neox < 2; neox++)
        for (int yarn = 0; yarn < 2; yarn++) {
            ok &= check(1, 14, 2, 64, 64, neox, yarn);   // qwen2-0.5b, one decode row
            ok &= check(5, 8, 8, 32, 16, neox, yarn);    // partial rotation, no grouping
            ok &= check(3, 4, 1, 128, 0, neox, yarn);    // no rotation at all
        }
    return ok ? 0 : 1;
}
