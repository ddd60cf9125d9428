// Weight formats (GGUF block layouts, as the SDK's reference dequantizers read them). Every
// format is read in chunks of 32 consecutive values: `deq32<T>(block, sub, w)` writes the
// values of chunk `sub` (0 for 32-value blocks, 0..7 for 256-value k-quant super-blocks) of
// the block at `b` into `w`. T is the ggml type id.

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q2_K 10
#define T_Q3_K 11
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30
#define T_MXFP4 39

template <int T> struct QT;
template <> struct QT<T_F32> { enum { BYTES = 128, SUBS = 1 }; };
template <> struct QT<T_F16> { enum { BYTES = 64, SUBS = 1 }; };
template <> struct QT<T_BF16> { enum { BYTES = 64, SUBS = 1 }; };
template <> struct QT<T_Q4_0> { enum { BYTES = 18, SUBS = 1 }; };
template <> struct QT<T_Q4_1> { enum { BYTES = 20, SUBS = 1 }; };
template <> struct QT<T_Q5_0> { enum { BYTES = 22, SUBS = 1 }; };
template <> struct QT<T_Q5_1> { enum { BYTES = 24, SUBS = 1 }; };
template <> struct QT<T_Q8_0> { enum { BYTES = 34, SUBS = 1 }; };
template <> struct QT<T_MXFP4> { enum { BYTES = 17, SUBS = 1 }; };
template <> struct QT<T_Q2_K> { enum { BYTES = 84, SUBS = 8 }; };
template <> struct QT<T_Q3_K> { enum { BYTES = 110, SUBS = 8 }; };
template <> struct QT<T_Q4_K> { enum { BYTES = 144, SUBS = 8 }; };
template <> struct QT<T_Q5_K> { enum { BYTES = 176, SUBS = 8 }; };
template <> struct QT<T_Q6_K> { enum { BYTES = 210, SUBS = 8 }; };

template <int T> __device__ __forceinline__ void deq32(const u8* b, int sub, float* w);

template <> __device__ __forceinline__ void deq32<T_F32>(const u8* b, int, float* w) {
    const float4* p = (const float4*)b;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 v = p[i];
        w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
    }
}

template <> __device__ __forceinline__ void deq32<T_F16>(const u8* b, int, float* w) {
    const uint4* p = (const uint4*)b;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        uint4 v = p[i];
        u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[8 * i + 2 * j] = h2f((u16)(a[j] & 0xffff));
            w[8 * i + 2 * j + 1] = h2f((u16)(a[j] >> 16));
        }
    }
}

template <> __device__ __forceinline__ void deq32<T_BF16>(const u8* b, int, float* w) {
    const uint4* p = (const uint4*)b;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        uint4 v = p[i];
        u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w[8 * i + 2 * j] = __int_as_float(a[j] << 16);
            w[8 * i + 2 * j + 1] = __int_as_float(a[j] & 0xffff0000u);
        }
    }
}

// 16 bytes of 4-bit codes at a 2-byte-aligned address.
__device__ __forceinline__ void nibbles16(const u8* q, u8* lo, u8* hi) {
    const u16* p = (const u16*)q;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        u16 v = p[i];
        lo[2 * i] = v & 0x0f; hi[2 * i] = (v >> 4) & 0x0f;
        lo[2 * i + 1] = (v >> 8) & 0x0f; hi[2 * i + 1] = v >> 12;
    }
}

template <> __device__ __forceinline__ void deq32<T_Q4_0>(const u8* b, int, float* w) {
    float d = h2f(*(const u16*)b);
    u8 lo[16], hi[16];
    nibbles16(b + 2, lo, hi);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        w[j] = d * (float)((int)lo[j] - 8);
        w[j + 16] = d * (float)((int)hi[j] - 8);
    }
}

template <> __device__ __forceinline__ void deq32<T_Q4_1>(const u8* b, int, float* w) {
    float d = h2f(*(const u16*)b), m = h2f(*(const u16*)(b + 2));
    u8 lo[16], hi[16];
    nibbles16(b + 4, lo, hi);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        w[j] = d * (float)lo[j] + m;
        w[j + 16] = d * (float)hi[j] + m;
    }
}

template <> __device__ __forceinline__ void deq32<T_Q5_0>(const u8* b, int, float* w) {
    float d = h2f(*(const u16*)b);
    u32 qh = (u32)(*(const u16*)(b + 2)) | ((u32)(*(const u16*)(b + 4)) << 16);
    u8 lo[16], hi[16];
    nibbles16(b + 6, lo, hi);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        int q0 = lo[j] | (((qh >> j) & 1) << 4);
        int q1 = hi[j] | (((qh >> (j + 16)) & 1) << 4);
        w[j] = d * (float)(q0 - 16);
        w[j + 16] = d * (float)(q1 - 16);
    }
}

template <> __device__ __forceinline__ void deq32<T_Q5_1>(const u8* b, int, float* w) {
    float d = h2f(*(const u16*)b), m = h2f(*(const u16*)(b + 2));
    u32 qh = *(const u32*)(b + 4);
    u8 lo[16], hi[16];
    nibbles16(b + 8, lo, hi);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        int q0 = lo[j] | (((qh >> j) & 1) << 4);
        int q1 = hi[j] | (((qh >> (j + 16)) & 1) << 4);
        w[j] = d * (float)q0 + m;
        w[j + 16] = d * (float)q1 + m;
    }
}

template <> __device__ __forceinline__ void deq32<T_Q8_0>(const u8* b, int, float* w) {
    float d = h2f(*(const u16*)b);
    const u16* p = (const u16*)(b + 2);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        u16 v = p[i];
        w[2 * i] = d * (float)(i8)(v & 0xff);
        w[2 * i + 1] = d * (float)(i8)(v >> 8);
    }
}

__device__ __forceinline__ float e8m0_half(u8 e) {
    u32 bits = e < 2 ? (0x00200000u << e) : ((u32)(e - 1) << 23);
    return __int_as_float(bits);
}

__constant__ float MXFP4_LUT[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

template <> __device__ __forceinline__ void deq32<T_MXFP4>(const u8* b, int, float* w) {
    float d = e8m0_half(b[0]);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        u8 v = b[1 + j];
        w[j] = d * MXFP4_LUT[v & 0x0f];
        w[j + 16] = d * MXFP4_LUT[v >> 4];
    }
}

__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63; *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

template <> __device__ __forceinline__ void deq32<T_Q4_K>(const u8* b, int c, float* w) {
    float d = h2f(*(const u16*)b), dmin = h2f(*(const u16*)(b + 2));
    int sc, m;
    scale_min_k4(c, b + 4, &sc, &m);
    float scale = d * (float)sc, mn = dmin * (float)m;
    const uint4* qp = (const uint4*)(b + 16 + 32 * (c >> 1));
    int sh = 4 * (c & 1);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        uint4 v = qp[i];
        u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < 4; k++)
                w[16 * i + 4 * j + k] = scale * (float)((a[j] >> (8 * k + sh)) & 0x0f) - mn;
    }
}

template <> __device__ __forceinline__ void deq32<T_Q5_K>(const u8* b, int c, float* w) {
    float d = h2f(*(const u16*)b), dmin = h2f(*(const u16*)(b + 2));
    int sc, m;
    scale_min_k4(c, b + 4, &sc, &m);
    float scale = d * (float)sc, mn = dmin * (float)m;
    const uint4* hp = (const uint4*)(b + 16);
    const uint4* qp = (const uint4*)(b + 48 + 32 * (c >> 1));
    int sh = 4 * (c & 1);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        uint4 v = qp[i], h = hp[i];
        u32 a[4] = {v.x, v.y, v.z, v.w}, hh[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) {
                u32 lo = (a[j] >> (8 * k + sh)) & 0x0f;
                u32 hi = (hh[j] >> (8 * k + c)) & 1;
                w[16 * i + 4 * j + k] = scale * (float)(lo | (hi << 4)) - mn;
            }
    }
}

template <> __device__ __forceinline__ void deq32<T_Q6_K>(const u8* b, int c, float* w) {
    float d = h2f(*(const u16*)(b + 208));
    const u16* ql = (const u16*)(b + 64 * (c >> 2) + 32 * (c & 1));
    const u16* qh = (const u16*)(b + 128 + 32 * (c >> 2));
    int shl = 4 * ((c >> 1) & 1), shh = 2 * (c & 3);
    float s0 = d * (float)(i8)b[192 + 2 * c], s1 = d * (float)(i8)b[192 + 2 * c + 1];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        u16 l = ql[i], h = qh[i];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            int e = 2 * i + k;
            int lo = (l >> (8 * k + shl)) & 0x0f;
            int hi = (h >> (8 * k + shh)) & 3;
            w[e] = (e < 16 ? s0 : s1) * (float)((lo | (hi << 4)) - 32);
        }
    }
}

template <> __device__ __forceinline__ void deq32<T_Q2_K>(const u8* b, int c, float* w) {
    float d = h2f(ld_u16(b + 80)), dmin = h2f(ld_u16(b + 82));
    int shift = 2 * (c & 3);
    const u8* qs = b + 16 + 32 * (c >> 2);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        u8 sc = b[2 * c + half];
        float scale = d * (float)(sc & 0x0f), mn = dmin * (float)(sc >> 4);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int q = (qs[16 * half + i] >> shift) & 3;
            w[16 * half + i] = scale * (float)q - mn;
        }
    }
}

template <> __device__ __forceinline__ void deq32<T_Q3_K>(const u8* b, int c, float* w) {
    float d = h2f(ld_u16(b + 108));
    const u8* hm = b;
    const u8* qs = b + 32 + 32 * (c >> 2);
    const u8* sc = b + 96;
    int shift = 2 * (c & 3);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int g = 2 * c + half;
        int lo = (sc[g % 8] >> (4 * (g / 8))) & 0x0f;
        int hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        float scale = d * (float)((lo | (hi << 4)) - 32);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int e = 16 * half + i;
            int q = ((qs[e] >> shift) & 3) - (((hm[e] >> c) & 1) ? 0 : 4);
            w[e] = scale * (float)q;
        }
    }
}

// ---- Eighths of chunks, for the matrix-vector kernels: `deq8<T>(block, sub, q, w)` writes
// values 8q..8q+7 (q in 0..4) of chunk `sub` of the block at `b` into `w`. Four lanes then
// cover a chunk and a warp reads 8 neighbouring chunks at once, so its loads are contiguous.

// 8 bytes at a 2-byte-aligned (ld8_2), 4-byte-aligned (ld8_4) or any (ld8_1) address, as two
// little-endian words.
__device__ __forceinline__ void ld8_2(const u8* p, u32* lo, u32* hi) {
    const u16* h = (const u16*)p;
    *lo = (u32)h[0] | ((u32)h[1] << 16);
    *hi = (u32)h[2] | ((u32)h[3] << 16);
}
__device__ __forceinline__ void ld8_4(const u8* p, u32* lo, u32* hi) {
    const u32* h = (const u32*)p;
    *lo = h[0];
    *hi = h[1];
}
__device__ __forceinline__ void ld8_1(const u8* p, u32* lo, u32* hi) {
    *lo = ld_u32(p);
    *hi = ld_u32(p + 4);
}
// Byte i (0..8) of the pair.
__device__ __forceinline__ u32 byte8(u32 lo, u32 hi, int i) {
    return ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xff;
}

template <int T> __device__ __forceinline__ void deq8(const u8* b, int sub, int q, float* w);

template <> __device__ __forceinline__ void deq8<T_F32>(const u8* b, int, int q, float* w) {
    const float4* p = (const float4*)(b + 32 * q);
    float4 a = p[0], c = p[1];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = c.x; w[5] = c.y; w[6] = c.z; w[7] = c.w;
}

template <> __device__ __forceinline__ void deq8<T_F16>(const u8* b, int, int q, float* w) {
    uint4 v = *(const uint4*)(b + 16 * q);
    u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        w[2 * j] = h2f((u16)(a[j] & 0xffff));
        w[2 * j + 1] = h2f((u16)(a[j] >> 16));
    }
}

template <> __device__ __forceinline__ void deq8<T_BF16>(const u8* b, int, int q, float* w) {
    uint4 v = *(const uint4*)(b + 16 * q);
    u32 a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        w[2 * j] = __int_as_float(a[j] << 16);
        w[2 * j + 1] = __int_as_float(a[j] & 0xffff0000u);
    }
}

template <> __device__ __forceinline__ void deq8<T_Q4_0>(const u8* b, int, int q, float* w) {
    float d = h2f(*(const u16*)b);
    u32 lo, hi;
    ld8_2(b + 2 + 8 * (q & 1), &lo, &hi);
    int sh = 4 * (q >> 1);
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = d * (float)((int)((byte8(lo, hi, i) >> sh) & 15) - 8);
}

template <> __device__ __forceinline__ void deq8<T_Q4_1>(const u8* b, int, int q, float* w) {
    float d = h2f(*(const u16*)b), m = h2f(*(const u16*)(b + 2));
    u32 lo, hi;
    ld8_4(b + 4 + 8 * (q & 1), &lo, &hi);
    int sh = 4 * (q >> 1);
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = d * (float)((byte8(lo, hi, i) >> sh) & 15) + m;
}

template <> __device__ __forceinline__ void deq8<T_Q5_0>(const u8* b, int, int q, float* w) {
    float d = h2f(*(const u16*)b);
    u32 qh = (u32)(*(const u16*)(b + 2)) | ((u32)(*(const u16*)(b + 4)) << 16);
    u32 lo, hi;
    ld8_2(b + 6 + 8 * (q & 1), &lo, &hi);
    int sh = 4 * (q >> 1);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int v = ((byte8(lo, hi, i) >> sh) & 15) | (((qh >> (8 * q + i)) & 1) << 4);
        w[i] = d * (float)(v - 16);
    }
}

template <> __device__ __forceinline__ void deq8<T_Q5_1>(const u8* b, int, int q, float* w) {
    float d = h2f(*(const u16*)b), m = h2f(*(const u16*)(b + 2));
    u32 qh = *(const u32*)(b + 4);
    u32 lo, hi;
    ld8_4(b + 8 + 8 * (q & 1), &lo, &hi);
    int sh = 4 * (q >> 1);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int v = ((byte8(lo, hi, i) >> sh) & 15) | (((qh >> (8 * q + i)) & 1) << 4);
        w[i] = d * (float)v + m;
    }
}

template <> __device__ __forceinline__ void deq8<T_Q8_0>(const u8* b, int, int q, float* w) {
    float d = h2f(*(const u16*)b);
    u32 lo, hi;
    ld8_2(b + 2 + 8 * q, &lo, &hi);
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = d * (float)(i8)byte8(lo, hi, i);
}

template <> __device__ __forceinline__ void deq8<T_MXFP4>(const u8* b, int, int q, float* w) {
    float d = e8m0_half(b[0]);
    u32 lo, hi;
    ld8_1(b + 1 + 8 * (q & 1), &lo, &hi);
    int sh = 4 * (q >> 1);
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = d * MXFP4_LUT[(byte8(lo, hi, i) >> sh) & 15];
}

template <> __device__ __forceinline__ void deq8<T_Q4_K>(const u8* b, int c, int q, float* w) {
    float d = h2f(*(const u16*)b), dmin = h2f(*(const u16*)(b + 2));
    int sc, m;
    scale_min_k4(c, b + 4, &sc, &m);
    float scale = d * (float)sc, mn = dmin * (float)m;
    u32 lo, hi;
    ld8_4(b + 16 + 32 * (c >> 1) + 8 * q, &lo, &hi);
    int sh = 4 * (c & 1);
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = scale * (float)((byte8(lo, hi, i) >> sh) & 15) - mn;
}

template <> __device__ __forceinline__ void deq8<T_Q5_K>(const u8* b, int c, int q, float* w) {
    float d = h2f(*(const u16*)b), dmin = h2f(*(const u16*)(b + 2));
    int sc, m;
    scale_min_k4(c, b + 4, &sc, &m);
    float scale = d * (float)sc, mn = dmin * (float)m;
    u32 lo, hi, hlo, hhi;
    ld8_4(b + 48 + 32 * (c >> 1) + 8 * q, &lo, &hi);
    ld8_4(b + 16 + 8 * q, &hlo, &hhi);
    int sh = 4 * (c & 1);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        u32 v = ((byte8(lo, hi, i) >> sh) & 15) | (((byte8(hlo, hhi, i) >> c) & 1) << 4);
        w[i] = scale * (float)v - mn;
    }
}

template <> __device__ __forceinline__ void deq8<T_Q6_K>(const u8* b, int c, int q, float* w) {
    float s = h2f(*(const u16*)(b + 208)) * (float)(i8)b[192 + 2 * c + (q >> 1)];
    u32 lo, hi, hlo, hhi;
    ld8_2(b + 64 * (c >> 2) + 32 * (c & 1) + 8 * q, &lo, &hi);
    ld8_2(b + 128 + 32 * (c >> 2) + 8 * q, &hlo, &hhi);
    int shl = 4 * ((c >> 1) & 1), shh = 2 * (c & 3);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int v = (int)((byte8(lo, hi, i) >> shl) & 15) | (int)(((byte8(hlo, hhi, i) >> shh) & 3) << 4);
        w[i] = s * (float)(v - 32);
    }
}

template <> __device__ __forceinline__ void deq8<T_Q2_K>(const u8* b, int c, int q, float* w) {
    float d = h2f(ld_u16(b + 80)), dmin = h2f(ld_u16(b + 82));
    u8 sc = b[2 * c + (q >> 1)];
    float scale = d * (float)(sc & 0x0f), mn = dmin * (float)(sc >> 4);
    u32 lo, hi;
    ld8_4(b + 16 + 32 * (c >> 2) + 8 * q, &lo, &hi);
    int sh = 2 * (c & 3);
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = scale * (float)((byte8(lo, hi, i) >> sh) & 3) - mn;
}

template <> __device__ __forceinline__ void deq8<T_Q3_K>(const u8* b, int c, int q, float* w) {
    const u8* sc = b + 96;
    int g = 2 * c + (q >> 1);
    int slo = (sc[g % 8] >> (4 * (g / 8))) & 0x0f;
    int shi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
    float scale = h2f(ld_u16(b + 108)) * (float)((slo | (shi << 4)) - 32);
    u32 lo, hi, mlo, mhi;
    ld8_2(b + 32 + 32 * (c >> 2) + 8 * q, &lo, &hi);
    ld8_2(b + 8 * q, &mlo, &mhi);
    int sh = 2 * (c & 3);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int v = (int)((byte8(lo, hi, i) >> sh) & 3) - (((byte8(mlo, mhi, i) >> c) & 1) ? 0 : 4);
        w[i] = scale * (float)v;
    }
}
