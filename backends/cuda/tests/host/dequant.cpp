// Reads `type blocks` and the blocks' bytes from stdin; writes every value twice as f32,
// first as deq32 gives it, then as deq8 does (chunk by chunk, quarter by quarter).
#include "shim.h"
#include "../../../../kernels/quant.cuh"
#include <cstdio>
#include <vector>

template <int T> static int run(const u8* b, long blocks, long len) {
    if (blocks * QT<T>::BYTES > len) return 5;
    const int subs = QT<T>::SUBS, bytes = QT<T>::BYTES;
    std::vector<float> a, c;
    for (long k = 0; k < blocks; k++)
        for (int s = 0; s < subs; s++) {
            float w[32];
            deq32<T>(b + k * bytes, s, w);
            a.insert(a.end(), w, w + 32);
            for (int q = 0; q < 4; q++) {
                deq8<T>(b + k * bytes, s, q, w);
                c.insert(c.end(), w, w + 8);
            }
        }
    fwrite(a.data(), 4, a.size(), stdout);
    fwrite(c.data(), 4, c.size(), stdout);
    return 0;
}

int main() {
    int type;
    long blocks, len;
    if (scanf("%d %ld %ld", &type, &blocks, &len) != 3 || getchar() != '\n') return 2;
    // 16-byte aligned, as device allocations are.
    std::vector<uint4> mem(len / 16 + 1);
    u8* b = (u8*)mem.data();
    if ((long)fread(b, 1, len, stdin) != len) return 3;
    switch (type) {
#define CASE(T) case T: return run<T>(b, blocks, len);
        CASE(T_F32) CASE(T_F16) CASE(T_BF16) CASE(T_Q4_0) CASE(T_Q4_1) CASE(T_Q5_0)
        CASE(T_Q5_1) CASE(T_Q8_0) CASE(T_MXFP4) CASE(T_Q2_K) CASE(T_Q3_K) CASE(T_Q4_K)
        CASE(T_Q5_K) CASE(T_Q6_K)
        default: return 4;
    }
}
