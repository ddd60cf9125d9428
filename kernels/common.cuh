// Kiln CUDA kernels: shared helpers. Compiled at run time by NVRTC for the device's exact
// architecture; no CUDA headers are included, so NVRTC alone (no toolkit) is enough.
// Every source file of this folder is concatenated after this one into one program.

// A compilation unit keeps part KILN_PART of a file's instantiations (see `KILN_IN`).
#ifdef KILN_PART
#define KILN_IN(k) (KILN_PART == (k))
#endif

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;

#define WARP 32
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 b) { return __int_as_float(((u32)b) << 16); }

// Little-endian loads at any (byte) alignment.
__device__ __forceinline__ u16 ld_u16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }
__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024); every thread gets
// the result. `red` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float* red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : NEG_INF;
    return warp_max(t);
}

// NaN counts as -inf wherever logits are ordered.
__device__ __forceinline__ float nan_to_ninf(float v) { return v != v ? NEG_INF : v; }

// Gated activations: act(g) * u. act: 0 SiLU, 1 GELU (tanh), 2 gpt-oss's clamped SwiGLU
// (alpha 1.702, limit 7).
__device__ __forceinline__ float glu_act(int act, float x, float v) {
    if (act == 0) return x / (1.0f + expf(-x)) * v;
    if (act == 1) {
        float t = tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x));
        return 0.5f * x * (1.0f + t) * v;
    }
    float xc = fminf(x, 7.0f);
    float uc = fminf(fmaxf(v, -7.0f), 7.0f);
    return xc / (1.0f + expf(-1.702f * xc)) * (uc + 1.0f);
}

// Programmatic dependent launch (compute capability 9.0 and up; no-ops before, and when the
// host launched the kernel without the attribute). `pdl_wait` returns once the previous
// kernel of the stream has finished and its writes are visible: a kernel touches no memory
// that the previous one reads or writes before it. `pdl_launch` lets the next kernel start
// (it waits in its own `pdl_wait`). Every kernel calls `pdl_begin` first, or prefetches its
// weights, then calls it.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_begin() {
    pdl_wait();
    pdl_launch();
}

// Asks L2 for the 128-byte lines of [p, p + bytes), spread over the `n` threads `t` of a
// group (weights only: they never change while kernels run).
__device__ __forceinline__ void prefetch_l2(const void* p, long bytes, int t, int n) {
    const char* c = (const char*)((unsigned long)p & ~127ul);
    const char* end = (const char*)p + bytes;
    for (c += 128l * t; c < end; c += 128l * n) asm volatile("prefetch.global.L2 [%0];" ::"l"(c));
}

// Integer tensor-core products (sm_80+): d = A.B over one 16 x 8 tile, s8 inputs, exact s32
// sums, the accumulator input zero. Fragment layouts: see kernels/mmq.cu.
__device__ __forceinline__ void mma_i8_k32(const u32* a, u32 b0, u32 b1, int* d) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%10,%10,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}
__device__ __forceinline__ void mma_i8_k16(u32 a0, u32 a1, u32 b, int* d) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%7,%7,%7};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(b), "r"(0));
}
