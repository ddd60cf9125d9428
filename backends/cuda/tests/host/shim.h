// Host stand-ins for the few CUDA built-ins that kernels/quant.cuh uses, so a C++ compiler can
// build its dequantizers for the CPU (tests/host_dequant.rs checks them against the SDK's).
#include <cmath>
#include <cstdint>
#include <cstring>
#define __device__
#define __forceinline__ inline
#define __constant__ static
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;
static inline float __int_as_float(u32 v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
static inline float h2f(u16 h) {
    u32 s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
static inline u16 ld_u16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
static inline u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
struct float4 { float x, y, z, w; };
struct uint4 { u32 x, y, z, w; };
