// Integer tensor-core matmuls ("mmq") for the quantized weight types: y = W.x, where each
// 32-value chunk of x is quantized to 8 bits (by the decode kernels as they read it; ahead,
// by `mq_quantize`, for the prompt kernels: the same bytes) and each chunk's integer dot
// product with the weights is taken exactly by `mma.sync` (s8 x s8 -> s32), then scaled in
// f32.
//
// One arithmetic for every number of rows (batch invariance, bit for bit). For output o of
// row r, chunk c contributes, in this order,
//     acc = fma((float)isum_h, s_h[o] * d[r], acc)        for each half h of the chunk
//     acc = fma(m_h[o], sx_h[r], acc)                     for weight types with offsets
// where isum is exact (integers), s/m are the weight's scales and offsets (`mq_load`), and
// d/sx the activation's scale and scaled sum (`mq_quant8` and `mq_sx` in every kernel). K is
// cut into slices of MMQ_SLICE chunks; a slice's chunks are added in order starting from 0,
// and the slices' sums are added in order (s0 + s1 + s2 ...). The decode kernel (`mmq_dec`,
// up to 16 rows per block row) gives each warp one slice of 8 outputs, issuing the loads of 8
// chunks before their products, and folds the slices in shared memory; the prompt kernel (`mmq_pre`) gives each warp a tile of 16 * MT rows and
// 8 * NT outputs and walks every slice itself. Both follow the order above operation for
// operation; NVRTC runs with `--fmad=false`, so no multiply and add is fused unless written.
//
// Fragment layouts (PTX ISA, mma.m16n8k32 / m16n8k16 with .s8): lane = 4g + t; A register 0
// holds row g, k = 4t..4t+3; register 1 row g + 8, same k; registers 2 and 3 the same rows at
// k + 16. B register 0 holds column g, k = 4t..4t+3; register 1 k + 16. C element e is row
// g + 8 (e >> 1), column 2t + (e & 1). The k16 shape takes A registers 0-1 (or 2-3) and one B
// register: the two halves of a chunk.

// Compilation units (`sources::units`) each keep one part of the instantiations below
// (KILN_PART, set by the unit); without it (the host tests) every part is kept.
#ifndef KILN_IN
#define KILN_IN(k) 1
#endif

#define MMQ_SLICE 16    // chunks (of 32 values) per K slice
#define MMQ_WARPS 4     // warps per prompt block
#define MMQ_DEC_MAXW 8  // most warps per decode block (one per unit; rounds beyond)

// Per weight type: HALVES = 2 where each 16 values have their own scale (one k16 mma each);
// OFF = 1 for one offset per 32 values (w = s q + m), 2 for one per 16.
template <int T> struct MQ { enum { HALVES = 1, OFF = 0 }; };
template <> struct MQ<T_Q4_1> { enum { HALVES = 1, OFF = 1 }; };
template <> struct MQ<T_Q5_1> { enum { HALVES = 1, OFF = 1 }; };
template <> struct MQ<T_Q4_K> { enum { HALVES = 1, OFF = 1 }; };
template <> struct MQ<T_Q5_K> { enum { HALVES = 1, OFF = 1 }; };
template <> struct MQ<T_Q6_K> { enum { HALVES = 2, OFF = 0 }; };
template <> struct MQ<T_Q3_K> { enum { HALVES = 2, OFF = 0 }; };
template <> struct MQ<T_Q2_K> { enum { HALVES = 2, OFF = 2 }; };

// One lane's B fragment of a chunk: values 4t..4t+3 (lo) and 16+4t..16+4t+3 (hi) of its
// column as signed bytes, and the column's scales and offsets (per half where HALVES = 2).
struct MqB {
    u32 lo, hi;
    float s[2], m[2];
};

// Bytes v (each 0..127) minus bytes c (each at most 128), as two's-complement bytes.
__device__ __forceinline__ u32 mq_sub4(u32 v, u32 c) {
    return ((v | 0x80808080u) - c) ^ 0x80808080u;
}
// Bits 0..3 of x to bit 0 of bytes 0..3.
__device__ __forceinline__ u32 mq_bits4(u32 x) { return ((x & 15u) * 0x00204081u) & 0x01010101u; }
// Four bytes at a 2-byte-aligned address.
__device__ __forceinline__ u32 mq_ld2(const u8* p) {
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}
__device__ __forceinline__ u32 mq_ld4(const u8* p) { return *(const u32*)p; }
// Four e2m1 codes (one per byte, 0..15) to twice their values as signed bytes.
__device__ __forceinline__ u32 mq_fp4(u32 n) {
    const u32 x = n & 0x07070707u;
    const u32 sel = (x & 7u) | ((x >> 4) & 0x70u) | ((x >> 8) & 0x700u) | ((x >> 12) & 0x7000u);
    const u32 pos = __byte_perm(0x03020100u, 0x0C080604u, sel);
    const u32 neg = __byte_perm(0xFDFEFF00u, 0xF4F8FAFCu, sel);
    const u32 m = ((n >> 3) & 0x01010101u) * 0xFFu;
    return (pos & ~m) | (neg & m);
}

// Lane t's B fragment of chunk `c` of the block at `b`.
template <int T> __device__ __forceinline__ void mq_load(const u8* b, int c, int t, MqB& r);

template <> __device__ __forceinline__ void mq_load<T_Q4_0>(const u8* b, int, int t, MqB& r) {
    const u32 w = mq_ld2(b + 2 + 4 * t);
    r.lo = mq_sub4(w & 0x0f0f0f0fu, 0x08080808u);
    r.hi = mq_sub4((w >> 4) & 0x0f0f0f0fu, 0x08080808u);
    r.s[0] = h2f(*(const u16*)b);
}

template <> __device__ __forceinline__ void mq_load<T_Q4_1>(const u8* b, int, int t, MqB& r) {
    const u32 w = mq_ld4(b + 4 + 4 * t);
    r.lo = w & 0x0f0f0f0fu;
    r.hi = (w >> 4) & 0x0f0f0f0fu;
    r.s[0] = h2f(*(const u16*)b);
    r.m[0] = h2f(*(const u16*)(b + 2));
}

template <> __device__ __forceinline__ void mq_load<T_Q5_0>(const u8* b, int, int t, MqB& r) {
    const u32 qh = mq_ld2(b + 2), w = mq_ld2(b + 6 + 4 * t);
    r.lo = mq_sub4((w & 0x0f0f0f0fu) | (mq_bits4(qh >> (4 * t)) << 4), 0x10101010u);
    r.hi = mq_sub4(((w >> 4) & 0x0f0f0f0fu) | (mq_bits4(qh >> (16 + 4 * t)) << 4), 0x10101010u);
    r.s[0] = h2f(*(const u16*)b);
}

template <> __device__ __forceinline__ void mq_load<T_Q5_1>(const u8* b, int, int t, MqB& r) {
    const u32 qh = mq_ld4(b + 4), w = mq_ld4(b + 8 + 4 * t);
    r.lo = (w & 0x0f0f0f0fu) | (mq_bits4(qh >> (4 * t)) << 4);
    r.hi = ((w >> 4) & 0x0f0f0f0fu) | (mq_bits4(qh >> (16 + 4 * t)) << 4);
    r.s[0] = h2f(*(const u16*)b);
    r.m[0] = h2f(*(const u16*)(b + 2));
}

template <> __device__ __forceinline__ void mq_load<T_Q8_0>(const u8* b, int, int t, MqB& r) {
    r.lo = mq_ld2(b + 2 + 4 * t);
    r.hi = mq_ld2(b + 18 + 4 * t);
    r.s[0] = h2f(*(const u16*)b);
}

template <> __device__ __forceinline__ void mq_load<T_MXFP4>(const u8* b, int, int t, MqB& r) {
    const u32 w = ld_u32(b + 1 + 4 * t);
    r.lo = mq_fp4(w & 0x0f0f0f0fu);
    r.hi = mq_fp4((w >> 4) & 0x0f0f0f0fu);
    r.s[0] = e8m0_half(b[0]);
}

template <> __device__ __forceinline__ void mq_load<T_Q4_K>(const u8* b, int c, int t, MqB& r) {
    int sc, m;
    scale_min_k4(c, b + 4, &sc, &m);
    const u8* q = b + 16 + 32 * (c >> 1) + 4 * t;
    const int sh = 4 * (c & 1);
    r.lo = (mq_ld4(q) >> sh) & 0x0f0f0f0fu;
    r.hi = (mq_ld4(q + 16) >> sh) & 0x0f0f0f0fu;
    r.s[0] = h2f(*(const u16*)b) * (float)sc;
    r.m[0] = -(h2f(*(const u16*)(b + 2)) * (float)m);
}

template <> __device__ __forceinline__ void mq_load<T_Q5_K>(const u8* b, int c, int t, MqB& r) {
    int sc, m;
    scale_min_k4(c, b + 4, &sc, &m);
    const u8* q = b + 48 + 32 * (c >> 1) + 4 * t;
    const u8* h = b + 16 + 4 * t;
    const int sh = 4 * (c & 1);
    r.lo = ((mq_ld4(q) >> sh) & 0x0f0f0f0fu) | (((mq_ld4(h) >> c) & 0x01010101u) << 4);
    r.hi = ((mq_ld4(q + 16) >> sh) & 0x0f0f0f0fu) | (((mq_ld4(h + 16) >> c) & 0x01010101u) << 4);
    r.s[0] = h2f(*(const u16*)b) * (float)sc;
    r.m[0] = -(h2f(*(const u16*)(b + 2)) * (float)m);
}

template <> __device__ __forceinline__ void mq_load<T_Q6_K>(const u8* b, int c, int t, MqB& r) {
    const u8* l = b + 64 * (c >> 2) + 32 * (c & 1) + 4 * t;
    const u8* h = b + 128 + 32 * (c >> 2) + 4 * t;
    const int shl = 4 * ((c >> 1) & 1), shh = 2 * (c & 3);
    r.lo = mq_sub4(((mq_ld2(l) >> shl) & 0x0f0f0f0fu) | (((mq_ld2(h) >> shh) & 0x03030303u) << 4),
                   0x20202020u);
    r.hi = mq_sub4(
        ((mq_ld2(l + 16) >> shl) & 0x0f0f0f0fu) | (((mq_ld2(h + 16) >> shh) & 0x03030303u) << 4),
        0x20202020u);
    const float d = h2f(*(const u16*)(b + 208));
    r.s[0] = d * (float)(i8)b[192 + 2 * c];
    r.s[1] = d * (float)(i8)b[193 + 2 * c];
}

template <> __device__ __forceinline__ void mq_load<T_Q3_K>(const u8* b, int c, int t, MqB& r) {
    const u8* q = b + 32 + 32 * (c >> 2) + 4 * t;
    const u8* hm = b + 4 * t;
    const int sh = 2 * (c & 3);
    r.lo = mq_sub4(((mq_ld2(q) >> sh) & 0x03030303u) | (((mq_ld2(hm) >> c) & 0x01010101u) << 2),
                   0x04040404u);
    r.hi = mq_sub4(
        ((mq_ld2(q + 16) >> sh) & 0x03030303u) | (((mq_ld2(hm + 16) >> c) & 0x01010101u) << 2),
        0x04040404u);
    const float d = h2f(ld_u16(b + 108));
    const u8* sc = b + 96;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int g = 2 * c + half;
        const int lo = (sc[g % 8] >> (4 * (g / 8))) & 0x0f;
        const int hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        r.s[half] = d * (float)((lo | (hi << 4)) - 32);
    }
}

template <> __device__ __forceinline__ void mq_load<T_Q2_K>(const u8* b, int c, int t, MqB& r) {
    const u8* q = b + 16 + 32 * (c >> 2) + 4 * t;
    const int sh = 2 * (c & 3);
    r.lo = (mq_ld4(q) >> sh) & 0x03030303u;
    r.hi = (mq_ld4(q + 16) >> sh) & 0x03030303u;
    const float d = h2f(ld_u16(b + 80)), dmin = h2f(ld_u16(b + 82));
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const u8 sc = b[2 * c + half];
        r.s[half] = d * (float)(sc & 0x0f);
        r.m[half] = -(dmin * (float)(sc >> 4));
    }
}

// Lane t's share of chunk c of one row (`on`: the row exists; otherwise zeros): values
// 4t..4t+3 and 16+4t..16+4t+3 of x (times the norm weight nw, if any) as signed bytes `lo`
// and `hi`, the chunk's scale d = max|x| / 127 (q = round(x * 127 / max|x|), ties to even),
// and the sums of the lane's four `lo` and four `hi` values. Every lane of the quad calls it
// (max|x| is reduced by shuffles within the quad).
__device__ __forceinline__ void mq_quant8(const float* xr, const float* nw, int c, int t, bool on,
                                          u32& lo, u32& hi, float& d, int& slo, int& shi) {
    float v[8];
    if (on) {
        const float4 a = __ldg((const float4*)(xr + 32 * c + 4 * t));
        const float4 b = __ldg((const float4*)(xr + 32 * c + 16 + 4 * t));
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        if (nw) {
            const float4 na = __ldg((const float4*)(nw + 32 * c + 4 * t));
            const float4 nb = __ldg((const float4*)(nw + 32 * c + 16 + 4 * t));
            v[0] *= na.x; v[1] *= na.y; v[2] *= na.z; v[3] *= na.w;
            v[4] *= nb.x; v[5] *= nb.y; v[6] *= nb.z; v[7] *= nb.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0.0f;
    }
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(v[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int q[8];
#pragma unroll
    for (int i = 0; i < 8; i++) q[i] = __float2int_rn(v[i] * id);
    lo = (u32)(q[0] & 255) | ((u32)(q[1] & 255) << 8) | ((u32)(q[2] & 255) << 16) |
         ((u32)(q[3] & 255) << 24);
    hi = (u32)(q[4] & 255) | ((u32)(q[5] & 255) << 8) | ((u32)(q[6] & 255) << 16) |
         ((u32)(q[7] & 255) << 24);
    slo = q[0] + q[1] + q[2] + q[3];
    shi = q[4] + q[5] + q[6] + q[7];
}

// The sum of a value over the quad of lanes (4g .. 4g + 3).
__device__ __forceinline__ int mq_quad_sum(int s) {
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    return s + __shfl_xor_sync(0xffffffffu, s, 2);
}

// The scaled sums of q that weights with offsets need: d * sum(q) per 32 values (OFF 1) or
// per 16 (OFF 2), from the sums of the chunk's values 0..15 (s0) and 16..31 (s1).
template <int OFF>
__device__ __forceinline__ void mq_sx(float d, int s0, int s1, float* sx) {
    if (OFF == 1) {
        sx[0] = d * (float)(s0 + s1);
    } else if (OFF == 2) {
        sx[0] = d * (float)s0;
        sx[1] = d * (float)s1;
    }
}

// Lane t's A fragment of chunk c of one row, quantized here (`mq_quant8`), with the scale d
// and, for weights with offsets, `mq_sx`. Every lane of the quad calls it.
template <int OFF>
__device__ __forceinline__ void mq_quant(const float* xr, const float* nw, int c, int t, bool on,
                                         u32& lo, u32& hi, float& d, float* sx) {
    int slo, shi;
    mq_quant8(xr, nw, c, t, on, lo, hi, d, slo, shi);
    if (OFF) mq_sx<OFF>(d, mq_quad_sum(slo), mq_quad_sum(shi), sx);
}

// A chunk of x quantized ahead (`mq_quantize`): the scale and the sums of q over values
// 0..15 (low 16 bits, signed) and 16..31 (high 16 bits); |sum| <= 16 * 127 fits.
struct MqMeta {
    float d;
    int s;
};

// Where the A fragments come from: x in f32, quantized by the warp that uses it (decode), or
// quantized ahead by `mq_quantize` into bytes (rows x K) and one MqMeta per chunk (prompts).
// Both give the same bytes, scales and sums.
struct MqXf {
    const float* x;
    int xs;
    const float* nw;
    template <int OFF>
    __device__ __forceinline__ void get(int r, int rows, int c, int t, u32& lo, u32& hi, float& d,
                                        float* sx) const {
        mq_quant<OFF>(x + (long)r * xs, nw, c, t, r < rows, lo, hi, d, sx);
    }
};
struct MqXq {
    const u8* q;
    const MqMeta* m;
    int K;
    template <int OFF>
    __device__ __forceinline__ void get(int r, int rows, int c, int t, u32& lo, u32& hi, float& d,
                                        float* sx) const {
        if (r < rows) {
            const u8* p = q + (long)r * K + 32 * c + 4 * t;
            lo = *(const u32*)p;
            hi = *(const u32*)(p + 16);
            const MqMeta mm = m[(long)r * (K >> 5) + c];
            d = mm.d;
            if (OFF) mq_sx<OFF>(d, (int)(short)(mm.s & 0xffff), mm.s >> 16, sx);
        } else {
            lo = hi = 0u;
            d = 0.0f;
            if (OFF) mq_sx<OFF>(0.0f, 0, 0, sx);
        }
    }
};

// A row's sum of squares (for the fused RMS norm), in one order for every kernel: lane l
// takes the float4s l, l + 32, ... in turn, then the warp's butterfly sum. Whole warp.
__device__ __forceinline__ float mq_row_ss(const float* xr, int K) {
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int i = lane; i < (K >> 2); i += 32) {
        const float4 v = __ldg((const float4*)xr + i);
        s = fmaf(v.x, v.x, s);
        s = fmaf(v.y, v.y, s);
        s = fmaf(v.z, v.z, s);
        s = fmaf(v.w, v.w, s);
    }
    return warp_sum(s);
}

// Chunks c0 .. c1 - 1 of one slice for MT row tiles (16 rows from r0 each) and NT column tiles
// (lane's weight row wr[j] for column g of tile j): acc[i][j][e] as in the header comment,
// starting from 0. Chunks go in groups of G: a group's weight and activation loads are all
// issued before its products (latency, not arithmetic, bounds a decode warp), which are then
// taken chunk by chunk in order. Whole warp.
template <int T, int MT, int NT, int G, class X>
__device__ __forceinline__ void mmq_slice(const u8* const* wr, const X& xa, int r0, int rows,
                                          int c0, int c1, float (*acc)[NT][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
    for (int cg = c0; cg < c1; cg += G) {
        MqB b[G][NT];
        u32 a[G][MT][4];
        float dx[G][MT][2], sx[G][MT][2][2];
#pragma unroll
        for (int k = 0; k < G; k++) {
            const int c = cg + k;
            if (G > 1 && c >= c1) break;  // the same for the whole warp
#pragma unroll
            for (int j = 0; j < NT; j++)
                mq_load<T>(wr[j] + (long)(c / QT<T>::SUBS) * QT<T>::BYTES, c % QT<T>::SUBS, t,
                           b[k][j]);
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = r0 + 16 * i + g + 8 * h;
                    xa.template get<MQ<T>::OFF>(r, rows, c, t, a[k][i][h], a[k][i][2 + h],
                                                dx[k][i][h], sx[k][i][h]);
                }
        }
#pragma unroll
        for (int k = 0; k < G; k++) {
            if (G > 1 && cg + k >= c1) break;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                // Scales of this lane's output columns 2t and 2t + 1 (held by lanes 8t, 8t + 4).
                float sc[2][2], mc[2][2];
#pragma unroll
                for (int q = 0; q < 2; q++)
#pragma unroll
                    for (int h = 0; h < MQ<T>::HALVES; h++) {
                        sc[q][h] = __shfl_sync(0xffffffffu, b[k][j].s[h], 8 * t + 4 * q);
                        if (MQ<T>::OFF)
                            mc[q][h] = __shfl_sync(0xffffffffu, b[k][j].m[h], 8 * t + 4 * q);
                    }
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    int d0[4], d1[4];
                    if (MQ<T>::HALVES == 1) {
                        mma_i8_k32(a[k][i], b[k][j].lo, b[k][j].hi, d0);
                    } else {
                        mma_i8_k16(a[k][i][0], a[k][i][1], b[k][j].lo, d0);
                        mma_i8_k16(a[k][i][2], a[k][i][3], b[k][j].hi, d1);
                    }
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int ri = e >> 1, ci = e & 1;
                        float v = acc[i][j][e];
                        v = fmaf((float)d0[e], sc[ci][0] * dx[k][i][ri], v);
                        if (MQ<T>::HALVES == 2)
                            v = fmaf((float)d1[e], sc[ci][1] * dx[k][i][ri], v);
                        if (MQ<T>::OFF >= 1) v = fmaf(mc[ci][0], sx[k][i][ri][0], v);
                        if (MQ<T>::OFF == 2) v = fmaf(mc[ci][1], sx[k][i][ri][1], v);
                        acc[i][j][e] = v;
                    }
                }
            }
        }
    }
}

// Slices of a row of K values, column tiles per decode block (at least 4 units), and warps
// per decode block: one per (tile, slice) unit, at most MMQ_DEC_MAXW (the host launches
// blocks of 32 * mmq_dec_warps(K) threads).
__host__ __device__ __forceinline__ int mmq_slices(int K) {
    return ((K >> 5) + MMQ_SLICE - 1) / MMQ_SLICE;
}
__host__ __device__ __forceinline__ int mmq_tpc(int S) { return S >= 4 ? 1 : S >= 2 ? 2 : 4; }
__host__ __device__ __forceinline__ int mmq_dec_warps(int K) {
    const int S = mmq_slices(K), u = mmq_tpc(S) * S;
    return u < MMQ_DEC_MAXW ? u : MMQ_DEC_MAXW;
}

// The finished value of one output: the RMS norm's scale (with `ss`), the bias, and the
// residual sum (`accumulate`), as `mmv_store` does.
__device__ __forceinline__ void mmq_put(float v, const float* ss, int K, float eps, const float* bias,
                                        int o, float* dst, int accumulate) {
    if (ss) v = v * rsqrtf(*ss / (float)K + eps);
    if (bias) v += bias[o];
    *dst = accumulate ? *dst + v : v;
}

// ---- Decode: up to 16 rows per block row (blockIdx.y), `mmq_tpc` tiles of 8 outputs per
// block (block index `bx`). Units (tile, slice) go to the block's W warps (`mmq_dec_warps`:
// one round unless there are more units), in slice order; after each round the block
// folds the round's partial sums (`part`, shared: W x NT x 16 x 8) into `tot` (shared: tpc x
// NT x 16 x 8) in slice order. NT = 2 for gate/up pairs
// (tile j = 0 gate, 1 up, same outputs). With a norm weight `nw`, `ssm` (shared, 16) gets the
// rows' sums of squares.
template <int T, int NT>
__device__ __forceinline__ void mmq_dec_units(const u8* const* Wj, long row_bytes, int N, int K,
                                              const float* x, int xs, int rows, const float* nw,
                                              int bx, float* part, float* tot, float* ssm) {
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nb = K >> 5, S = mmq_slices(K), tpc = mmq_tpc(S), units = tpc * S;
    const int W = blockDim.x >> 5, r0 = blockIdx.y * 16;
    if (nw)
        for (int r = w; r < 16; r += W) {
            const float s = r0 + r < rows ? mq_row_ss(x + (long)(r0 + r) * xs, K) : 0.0f;
            if (lane == 0) ssm[r] = s;
        }
    for (int base = 0; base < units; base += W) {
        const int u = base + w;
        if (u < units) {
            const int tile = u % tpc, s = u / tpc;
            const int o = (bx * tpc + tile) * 8 + g;
            const u8* wr[NT];
#pragma unroll
            for (int j = 0; j < NT; j++) wr[j] = Wj[j] + (long)min(o, N - 1) * row_bytes;
            float acc[1][NT][4];
            mmq_slice<T, 1, NT, NT == 1 ? 8 : 4>(wr, MqXf{x, xs, nw}, r0, rows, s * MMQ_SLICE,
                                                 min(nb, (s + 1) * MMQ_SLICE), acc);
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    part[((w * NT + j) * 16 + g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)] =
                        acc[0][j][e];
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < tpc * NT * 128; idx += blockDim.x) {
            const int tile = idx / (NT * 128), rest = idx % (NT * 128);
            for (int k = 0; k < W && base + k < units; k++) {
                const int uk = base + k;
                if (uk % tpc != tile) continue;
                const float v = part[k * NT * 128 + rest];
                tot[idx] = uk / tpc == 0 ? v : tot[idx] + v;
            }
        }
        __syncthreads();
    }
}

// Asks L2 for the weight rows of the `n` outputs from `o` (before waiting for the input).
__device__ __forceinline__ void mmq_prefetch(const u8* W, long row_bytes, int o, int n, int N) {
    if (blockIdx.y == 0 && o < N)
        prefetch_l2(W + (long)o * row_bytes, (long)min(n, N - o) * row_bytes, threadIdx.x,
                    blockDim.x);
}

// Shared memory of the decode kernels (floats): part, tot, ssm.
#define MMQ_DEC_SMEM(NT) (MMQ_DEC_MAXW * NT * 128 + 4 * NT * 128 + 16)

// y = W.x (+ bias) (accumulate: y += ...), with the RMS norm fused when `nw` is given. Block:
// mmq_dec_warps(K) warps; grid (ceil(N / 8 / tpc), ceil(rows / 16)).
template <int T>
__device__ __forceinline__ void mmq_dec(const u8* W, const float* x, float* y, int K, int N,
                                        int rows, int xs, int ys, const float* bias,
                                        int accumulate, const float* nw, float eps, int bx,
                                        float* sm) {
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const int tpc = mmq_tpc(mmq_slices(K));
    mmq_prefetch(W, row_bytes, bx * tpc * 8, tpc * 8, N);
    pdl_begin();
    float *part = sm, *tot = sm + MMQ_DEC_MAXW * 128, *ssm = tot + 4 * 128;
    const u8* Wj[1] = {W};
    mmq_dec_units<T, 1>(Wj, row_bytes, N, K, x, xs, rows, nw, bx, part, tot, ssm);
    const int r0 = blockIdx.y * 16;
    for (int idx = threadIdx.x; idx < tpc * 128; idx += blockDim.x) {
        const int tile = idx >> 7, r = (idx >> 3) & 15, col = idx & 7;
        const int o = (bx * tpc + tile) * 8 + col;
        if (o < N && r0 + r < rows)
            mmq_put(tot[idx], nw ? &ssm[r] : nullptr, K, eps, bias, o,
                    y + (long)(r0 + r) * ys + o, accumulate);
    }
}

// y = act(Wg.x) * (Wu.x), with the RMS norm fused when `nw` is given.
template <int T>
__device__ __forceinline__ void mmq_glu_dec(const u8* Wg, const u8* Wu, const float* x, float* y,
                                            int K, int N, int rows, int xs, int ys, int act,
                                            const float* nw, float eps, float* sm) {
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const int tpc = mmq_tpc(mmq_slices(K)), bx = blockIdx.x;
    mmq_prefetch(Wg, row_bytes, bx * tpc * 8, tpc * 8, N);
    mmq_prefetch(Wu, row_bytes, bx * tpc * 8, tpc * 8, N);
    pdl_begin();
    float *part = sm, *tot = sm + MMQ_DEC_MAXW * 256, *ssm = tot + 4 * 256;
    const u8* Wj[2] = {Wg, Wu};
    mmq_dec_units<T, 2>(Wj, row_bytes, N, K, x, xs, rows, nw, bx, part, tot, ssm);
    const int r0 = blockIdx.y * 16;
    for (int idx = threadIdx.x; idx < tpc * 128; idx += blockDim.x) {
        const int tile = idx >> 7, r = (idx >> 3) & 15, col = idx & 7;
        const int o = (bx * tpc + tile) * 8 + col;
        if (o >= N || r0 + r >= rows) continue;
        float gv = tot[tile * 256 + (idx & 127)], uv = tot[tile * 256 + 128 + (idx & 127)];
        if (nw) {
            const float sc = rsqrtf(ssm[r] / (float)K + eps);
            gv *= sc;
            uv *= sc;
        }
        y[(long)(r0 + r) * ys + o] = glu_act(act, gv, uv);
    }
}

// ---- Prompts: x is quantized ahead (`mq_quantize`, once per row and chunk instead of once
// per warp that reads it); each warp a tile of 16 * MT rows x 8 * NT outputs over all
// slices; a block is MMQ_PRE_WR x (MMQ_WARPS / MMQ_PRE_WR) warps (rows x columns). `wr`
// gives each column tile's weight row for this lane.

// x (rows x K, row stride xs; times the norm weight nw, if any) to bytes xq (rows x K) and
// one MqMeta per chunk (xm), with `mq_quant8`: the bytes and scales the decode kernels
// compute for themselves. Grid (ceil(K / 32 / 32), rows); 128 threads, a quad per chunk.
#if KILN_IN(2)
extern "C" __global__ void __launch_bounds__(128)
    mq_quantize(const float* x, int xs, const float* nw, int K, int rows, u8* xq, MqMeta* xm) {
    pdl_begin();
    const int lane = threadIdx.x & 31, t = lane & 3;
    const int c = blockIdx.x * 32 + (threadIdx.x >> 2), r = blockIdx.y, nb = K >> 5;
    const bool on = c < nb && r < rows;
    u32 lo, hi;
    float d;
    int slo, shi;
    mq_quant8(x + (long)r * xs, nw, on ? c : 0, t, on, lo, hi, d, slo, shi);
    const int s0 = mq_quad_sum(slo), s1 = mq_quad_sum(shi);
    if (!on) return;
    u8* p = xq + (long)r * K + 32 * c + 4 * t;
    *(u32*)p = lo;
    *(u32*)(p + 16) = hi;
    if (t == 0) xm[(long)r * nb + c] = MqMeta{d, (int)(((u32)s0 & 0xffffu) | ((u32)s1 << 16))};
}
#endif

template <int T, int MT, int NT>
__device__ __forceinline__ void mmq_pre_tile(const u8* const* wr, const MqXq& xa, int r0,
                                             int rows, int K, float (*tot)[NT][4]) {
    const int nb = K >> 5, S = mmq_slices(K);
    for (int s = 0; s < S; s++) {
        float acc[MT][NT][4];
        mmq_slice<T, MT, NT, 1>(wr, xa, r0, rows, s * MMQ_SLICE, min(nb, (s + 1) * MMQ_SLICE),
                                acc);
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    tot[i][j][e] = s == 0 ? acc[i][j][e] : tot[i][j][e] + acc[i][j][e];
    }
}

#define MMQ_PRE_MT 2
#define MMQ_PRE_NT 4
#define MMQ_PRE_WR 2  // warps along rows; MMQ_WARPS / MMQ_PRE_WR along outputs
#define MMQ_PRE_ROWS (16 * MMQ_PRE_MT * MMQ_PRE_WR)
#define MMQ_PRE_COLS (8 * MMQ_PRE_NT * (MMQ_WARPS / MMQ_PRE_WR))

// Sums of squares of the block's rows (with a norm), into ssm.
__device__ __forceinline__ void mmq_pre_ss(const float* x, int xs, int rows, int K, int rb,
                                           float* ssm) {
    const int w = threadIdx.x >> 5;
    for (int r = w; r < MMQ_PRE_ROWS; r += MMQ_WARPS) {
        const float s = rb + r < rows ? mq_row_ss(x + (long)(rb + r) * xs, K) : 0.0f;
        if ((threadIdx.x & 31) == 0) ssm[r] = s;
    }
    __syncthreads();
}

// y = W.x (+ bias) (accumulate: y += ...), with the RMS norm fused when `nw` is given. Grid
// (ceil(N / MMQ_PRE_COLS), ceil(rows / MMQ_PRE_ROWS)); `ssm` is MMQ_PRE_ROWS shared floats.
template <int T>
__device__ __forceinline__ void mmq_pre(const u8* W, const float* x, float* y, int K, int N,
                                        int rows, int xs, int ys, const float* bias,
                                        int accumulate, const float* nw, float eps, int bx,
                                        float* ssm, const u8* xq, const MqMeta* xm) {
    pdl_begin();
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wrow = w % MMQ_PRE_WR, wcol = w / MMQ_PRE_WR;
    const int rb = blockIdx.y * MMQ_PRE_ROWS, r0 = rb + wrow * 16 * MMQ_PRE_MT;
    const int o0 = bx * MMQ_PRE_COLS + wcol * 8 * MMQ_PRE_NT;
    if (nw) mmq_pre_ss(x, xs, rows, K, rb, ssm);
    const u8* wr[MMQ_PRE_NT];
#pragma unroll
    for (int j = 0; j < MMQ_PRE_NT; j++) wr[j] = W + (long)min(o0 + 8 * j + g, N - 1) * row_bytes;
    float tot[MMQ_PRE_MT][MMQ_PRE_NT][4];
    mmq_pre_tile<T, MMQ_PRE_MT, MMQ_PRE_NT>(wr, MqXq{xq, xm, K}, r0, rows, K, tot);
#pragma unroll
    for (int i = 0; i < MMQ_PRE_MT; i++)
#pragma unroll
        for (int j = 0; j < MMQ_PRE_NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rl = r0 - rb + 16 * i + g + 8 * (e >> 1);
                const int o = o0 + 8 * j + 2 * t + (e & 1);
                if (o < N && rb + rl < rows)
                    mmq_put(tot[i][j][e], nw ? &ssm[rl] : nullptr, K, eps, bias, o,
                            y + (long)(rb + rl) * ys + o, accumulate);
            }
}

// y = act(Wg.x) * (Wu.x): a warp's column tiles 0 .. NT/2 - 1 are gate rows, the rest the up
// rows of the same outputs. Grid (ceil(N / (MMQ_PRE_COLS / 2)), ceil(rows / MMQ_PRE_ROWS)).
template <int T>
__device__ __forceinline__ void mmq_glu_pre(const u8* Wg, const u8* Wu, const float* x, float* y,
                                            int K, int N, int rows, int xs, int ys, int act,
                                            const float* nw, float eps, float* ssm, const u8* xq,
                                            const MqMeta* xm) {
    pdl_begin();
    const int H = MMQ_PRE_NT / 2;
    const long row_bytes = (long)((K >> 5) / QT<T>::SUBS) * QT<T>::BYTES;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wrow = w % MMQ_PRE_WR, wcol = w / MMQ_PRE_WR;
    const int rb = blockIdx.y * MMQ_PRE_ROWS, r0 = rb + wrow * 16 * MMQ_PRE_MT;
    const int o0 = blockIdx.x * (MMQ_PRE_COLS / 2) + wcol * 8 * H;
    if (nw) mmq_pre_ss(x, xs, rows, K, rb, ssm);
    const u8* wr[MMQ_PRE_NT];
#pragma unroll
    for (int j = 0; j < H; j++) {
        const long at = (long)min(o0 + 8 * j + g, N - 1) * row_bytes;
        wr[j] = Wg + at;
        wr[H + j] = Wu + at;
    }
    float tot[MMQ_PRE_MT][MMQ_PRE_NT][4];
    mmq_pre_tile<T, MMQ_PRE_MT, MMQ_PRE_NT>(wr, MqXq{xq, xm, K}, r0, rows, K, tot);
#pragma unroll
    for (int i = 0; i < MMQ_PRE_MT; i++)
#pragma unroll
        for (int j = 0; j < H; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rl = r0 - rb + 16 * i + g + 8 * (e >> 1);
                const int o = o0 + 8 * j + 2 * t + (e & 1);
                if (o >= N || rb + rl >= rows) continue;
                float gv = tot[i][j][e], uv = tot[i][H + j][e];
                if (nw) {
                    const float sc = rsqrtf(ssm[rl] / (float)K + eps);
                    gv *= sc;
                    uv *= sc;
                }
                y[(long)(rb + rl) * ys + o] = glu_act(act, gv, uv);
            }
}

// Kernels `mmq_{type}_{d,p}` and `mmq_glu_{type}_{d,p}`: d for few rows (16 per block row),
// p for prompts; both give the same bits, so the host picks by the number of rows alone.
#define MMQ_INST(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) mmq_##NAME##_d(                         \
        const u8* W, const float* x, float* y, int K, int N, int rows, int xs, int ys,         \
        const float* bias, int accumulate) {                                                   \
        __shared__ float sm[MMQ_DEC_SMEM(1)];                                                  \
        mmq_dec<T>(W, x, y, K, N, rows, xs, ys, bias, accumulate, nullptr, 0.0f, blockIdx.x,   \
                   sm);                                                                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(128) mmq_##NAME##_p(                         \
        const u8* W, const float* x, float* y, int K, int N, int rows, int xs, int ys,         \
        const float* bias, int accumulate, const u8* xq, const MqMeta* xm) {                   \
        __shared__ float ssm[MMQ_PRE_ROWS];                                                    \
        mmq_pre<T>(W, x, y, K, N, rows, xs, ys, bias, accumulate, nullptr, 0.0f, blockIdx.x,   \
                   ssm, xq, xm);                                                               \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) mmq_glu_##NAME##_d(                     \
        const u8* Wg, const u8* Wu, const float* x, float* y, int K, int N, int rows, int xs,  \
        int ys, int act, const float* nw, float eps) {                                         \
        __shared__ float sm[MMQ_DEC_SMEM(2)];                                                  \
        mmq_glu_dec<T>(Wg, Wu, x, y, K, N, rows, xs, ys, act, nw, eps, sm);                    \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(128) mmq_glu_##NAME##_p(                     \
        const u8* Wg, const u8* Wu, const float* x, float* y, int K, int N, int rows, int xs,  \
        int ys, int act, const float* nw, float eps, const u8* xq, const MqMeta* xm) {         \
        __shared__ float ssm[MMQ_PRE_ROWS];                                                    \
        mmq_glu_pre<T>(Wg, Wu, x, y, K, N, rows, xs, ys, act, nw, eps, ssm, xq, xm);           \
    }

#if KILN_IN(0)
MMQ_INST(q4_0, T_Q4_0)
MMQ_INST(q4_1, T_Q4_1)
MMQ_INST(q5_0, T_Q5_0)
MMQ_INST(q5_1, T_Q5_1)
MMQ_INST(q8_0, T_Q8_0)
MMQ_INST(mxfp4, T_MXFP4)
#endif
#if KILN_IN(1)
MMQ_INST(q2_k, T_Q2_K)
MMQ_INST(q3_k, T_Q3_K)
MMQ_INST(q4_k, T_Q4_K)
MMQ_INST(q5_k, T_Q5_K)
MMQ_INST(q6_k, T_Q6_K)
#endif

// Up to three projections of the same input in one launch (queries, keys, values), the
// quantized types only (a run-time switch per block): segment s owns `nb_s` consecutive blocks
// and computes y_s = W_s.x (+ bias_s) exactly as `mmq_{type}_{d,p}` would (the same bits as
// separate launches). With `nw`, x is first RMS-normed with weight nw (and `eps`).
#define MMQ_SEG_PARAMS(s)                                                                      \
    const u8 *W##s, const float *b##s, float *y##s, int t##s, int n##s, int ys##s, int nb##s
#define MMQ_SEG_PICK                                                                           \
    int bx = blockIdx.x;                                                                       \
    const u8* W = W0; const float* bias = b0; float* y = y0;                                   \
    int type = t0, N = n0, ys = ys0;                                                           \
    if (bx >= nb0) {                                                                           \
        bx -= nb0;                                                                             \
        W = W1; bias = b1; y = y1; type = t1; N = n1; ys = ys1;                                \
        if (bx >= nb1) {                                                                       \
            bx -= nb1;                                                                         \
            W = W2; bias = b2; y = y2; type = t2; N = n2; ys = ys2;                            \
        }                                                                                      \
    }                                                                                          \
    if (N <= 0) return;
#define MMQ_SEG_CASES(CALL)                                                                    \
    switch (type) {                                                                            \
        case T_Q4_0: CALL(T_Q4_0); break;                                                      \
        case T_Q4_1: CALL(T_Q4_1); break;                                                      \
        case T_Q5_0: CALL(T_Q5_0); break;                                                      \
        case T_Q5_1: CALL(T_Q5_1); break;                                                      \
        case T_Q8_0: CALL(T_Q8_0); break;                                                      \
        case T_MXFP4: CALL(T_MXFP4); break;                                                    \
        case T_Q2_K: CALL(T_Q2_K); break;                                                      \
        case T_Q3_K: CALL(T_Q3_K); break;                                                      \
        case T_Q4_K: CALL(T_Q4_K); break;                                                      \
        case T_Q5_K: CALL(T_Q5_K); break;                                                      \
        case T_Q6_K: CALL(T_Q6_K); break;                                                      \
        default: break;                                                                        \
    }

#if KILN_IN(2)
extern "C" __global__ void __launch_bounds__(256)
    mmq_seg_d(const float* x, int K, int rows, int xs, const float* nw, float eps,
              MMQ_SEG_PARAMS(0), MMQ_SEG_PARAMS(1), MMQ_SEG_PARAMS(2)) {
    __shared__ float sm[MMQ_DEC_SMEM(1)];
    MMQ_SEG_PICK
#define MMQ_SEG_D(T) mmq_dec<T>(W, x, y, K, N, rows, xs, ys, bias, 0, nw, eps, bx, sm)
    MMQ_SEG_CASES(MMQ_SEG_D)
#undef MMQ_SEG_D
}

extern "C" __global__ void __launch_bounds__(128)
    mmq_seg_p(const float* x, int K, int rows, int xs, const float* nw, float eps,
              MMQ_SEG_PARAMS(0), MMQ_SEG_PARAMS(1), MMQ_SEG_PARAMS(2), const u8* xq,
              const MqMeta* xm) {
    __shared__ float ssm[MMQ_PRE_ROWS];
    MMQ_SEG_PICK
#define MMQ_SEG_P(T) mmq_pre<T>(W, x, y, K, N, rows, xs, ys, bias, 0, nw, eps, bx, ssm, xq, xm)
    MMQ_SEG_CASES(MMQ_SEG_P)
#undef MMQ_SEG_P
}
#endif
