// Host stand-ins for running whole CUDA blocks on the CPU, one OS thread per CUDA thread
// (mmq.cpp): shuffles and tensor-core products exchange values between the lanes of a warp at
// barriers, as the hardware's lockstep would, and __syncthreads is a barrier of the block.
// The integer products are computed from the PTX fragment layouts (see kernels/mmq.cu), so a
// kernel that puts a value in the wrong register gives wrong sums here too.
#include "shim.h"
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>
struct Idx { unsigned x, y, z; };
static thread_local Idx threadIdx;
static Idx blockIdx, gridDim, blockDim;
#define __global__
#define __host__
#define __shared__ static
#define __launch_bounds__(n)
#define __restrict__
#define WARP 32

struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    int n = 0, count = 0;
    long gen = 0;
    void wait() {
        std::unique_lock<std::mutex> l(m);
        long g = gen;
        if (++count == n) {
            count = 0;
            gen++;
            cv.notify_all();
        } else {
            cv.wait(l, [&] { return gen != g; });
        }
    }
};
static Barrier block_bar, warp_bar[32];
static u32 xch[32][32][8];  // [warp][lane][slot]

static inline void __syncthreads() { block_bar.wait(); }
static inline void pdl_begin() {}
static inline void prefetch_l2(const void*, long, int, int) {}
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
static inline int __float2int_rn(float v) { return (int)std::nearbyint(v); }
static inline u32 __byte_perm(u32 x, u32 y, u32 s) {
    const uint64_t v = (uint64_t)x | ((uint64_t)y << 32);
    u32 r = 0;
    for (int i = 0; i < 4; i++) r |= (u32)((v >> (8 * ((s >> (4 * i)) & 7))) & 255) << (8 * i);
    return r;
}

// Every lane of the warp puts a 32-bit value in; each gets lane `src`'s.
template <class T> static T lane_xch(T v, int src) {
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    u32 b;
    std::memcpy(&b, &v, 4);
    xch[w][l][0] = b;
    warp_bar[w].wait();
    const u32 r = xch[w][src & 31][0];
    warp_bar[w].wait();
    T o;
    std::memcpy(&o, &r, 4);
    return o;
}
template <class T> static T __shfl_xor_sync(unsigned, T v, int m) {
    return lane_xch(v, (threadIdx.x & 31) ^ m);
}
template <class T> static T __shfl_sync(unsigned, T v, int src) { return lane_xch(v, src); }
static inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static inline int sbyte(u32 v, int i) { return (int)(signed char)((v >> (8 * i)) & 255); }
// mma.m16n8k32 (slots 0-3: A registers, 4-5: B registers) and m16n8k16 (slots 0-1, 4).
static void mma_host(int k, const u32* a, const u32* b, int* d) {
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    for (int i = 0; i < (k == 32 ? 4 : 2); i++) xch[w][l][i] = a[i];
    for (int i = 0; i < (k == 32 ? 2 : 1); i++) xch[w][l][4 + i] = b[i];
    warp_bar[w].wait();
    const int g = l >> 2, t = l & 3;
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        int s = 0;
        for (int kk = 0; kk < k; kk++) {
            const int hi = kk >= 16, kl = kk & 15;
            const u32 av = xch[w][(row & 7) * 4 + kl / 4][2 * hi + (row >= 8)];
            const u32 bv = xch[w][col * 4 + kl / 4][4 + hi];
            s += sbyte(av, kl & 3) * sbyte(bv, kl & 3);
        }
        d[e] = s;
    }
    warp_bar[w].wait();
}
static inline void mma_i8_k32(const u32* a, u32 b0, u32 b1, int* d) {
    const u32 b[2] = {b0, b1};
    mma_host(32, a, b, d);
}
static inline void mma_i8_k16(u32 a0, u32 a1, u32 b, int* d) {
    const u32 a[2] = {a0, a1};
    mma_host(16, a, &b, d);
}

// Runs `f` as the kernel of a (gx, gy) grid of `threads`-thread blocks, one block at a time.
template <class F> static void run_grid(unsigned gx, unsigned gy, unsigned threads, F f) {
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, 1};
    block_bar.n = (int)threads;
    for (int w = 0; w < 32; w++) warp_bar[w].n = 32;
    for (unsigned by = 0; by < gy; by++)
        for (unsigned bx = 0; bx < gx; bx++) {
            blockIdx = {bx, by, 0};
            std::vector<std::thread> ts;
            for (unsigned i = 0; i < threads; i++)
                ts.emplace_back([i, &f] {
                    threadIdx = {i, 0, 0};
                    f();
                });
            for (auto& t : ts) t.join();
        }
}
