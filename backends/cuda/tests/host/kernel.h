// Host stand-ins for the CUDA execution model, for the tests that run whole kernels on the
// CPU one thread at a time (matvec.cpp, rope.cpp): the thread and block indices are globals
// the test sets, barriers and fences do nothing, and loads through the caches are plain loads.
// Warp and block reductions are left to each test (what they return is the test's choice).
#include "shim.h"
#include <cstdio>
#include <cstring>
#include <vector>
struct Idx { unsigned x, y, z; };
static Idx threadIdx, blockIdx, gridDim, blockDim;
#define __global__
#define __shared__ static
#define __launch_bounds__(n)
#define __restrict__
#define WARP 32
static inline void __syncthreads() {}
static inline void __threadfence() {}
// One thread at a time: nothing runs before or beside a kernel, and prefetches are hints.
static inline void pdl_begin() {}
static inline void prefetch_l2(const void*, long, int, int) {}
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
static inline int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
static inline int atomicAdd(int* p, int v) { int o = *p; *p += v; return o; }
static inline u32 atomicAdd(u32* p, u32 v) { u32 o = *p; *p += v; return o; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
