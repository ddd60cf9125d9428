// Runs the matrix-vector kernels' per-lane dot products (`mmv_dots` in kernels/matvec.cu) on
// the CPU, one lane at a time, and sums the lanes and K slices as the warp and block would.
// stdin: "type K N rows split norm\n", then the weight rows' bytes, x (rows x K f32), and, if
// norm, the norm weight (K f32). stdout: y (rows x N f32), then each row's sum of squares.
// Exit status 5: a lane's sum with four outputs per warp differs from its sum alone.
#include "kernel.h"
static inline float warp_sum(float v) { return v; }  // the host sums the lanes itself
static inline float glu_act(int, float x, float) { return x; }
#include "../../../../kernels/quant.cuh"
#include "../../../../kernels/matvec.cu"

template <int T>
static int run(const u8* W, const float* x, const float* nw, int K, int N, int rows, int split,
               std::vector<float>& y, std::vector<float>& ss) {
    const int R = 1;
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < N; o++) {
            double tot = 0, tss = 0;
            for (int slice = 0; slice < split; slice++)
                for (int lane = 0; lane < 32; lane++) {
                    threadIdx.x = lane;
                    float acc[R], s2[R];
                    mmv_dots<T, R>(W, x, K, rows, K, r, o, slice, split, acc, nw,
                                   nw ? s2 : nullptr);
                    // Four outputs per warp give each output's bits unchanged.
                    float acc4[4 * R], s4[R];
                    const int o4 = o & ~3;
                    mmv_dots<T, R, 4>(W, x, K, rows, K, r, o4, slice, split, acc4, nw,
                                      nw ? s4 : nullptr, N - 1);
                    if (memcmp(&acc4[o - o4], &acc[0], 4) != 0 || (nw && memcmp(s4, s2, 4)))
                        return 5;
                    tot += acc[0];
                    if (nw) tss += s2[0];
                }
            y[(long)r * N + o] = (float)tot;
            if (o == 0) ss[r] = (float)tss;
        }
    return 0;
}

int main() {
    int type, K, N, rows, split, norm;
    if (scanf("%d %d %d %d %d %d", &type, &K, &N, &rows, &split, &norm) != 6 || getchar() != '\n')
        return 2;
    long wbytes;
    if (scanf("%ld", &wbytes) != 1 || getchar() != '\n') return 2;
    std::vector<uint4> wm(wbytes / 16 + 1);
    std::vector<float> x((long)rows * K), nw(K), y((long)rows * N), ss(rows);
    if ((long)fread(wm.data(), 1, wbytes, stdin) != wbytes) return 3;
    if (fread(x.data(), 4, x.size(), stdin) != x.size()) return 3;
    if (norm && fread(nw.data(), 4, K, stdin) != (size_t)K) return 3;
    const u8* W = (const u8*)wm.data();
    const float* n = norm ? nw.data() : nullptr;
    int rc;
    switch (type) {
#define CASE(T) case T: rc = run<T>(W, x.data(), n, K, N, rows, split, y, ss); break;
        CASE(T_F32) CASE(T_F16) CASE(T_BF16) CASE(T_Q4_0) CASE(T_Q4_1) CASE(T_Q5_0)
        CASE(T_Q5_1) CASE(T_Q8_0) CASE(T_MXFP4) CASE(T_Q2_K) CASE(T_Q3_K) CASE(T_Q4_K)
        CASE(T_Q5_K) CASE(T_Q6_K)
        default: return 4;
    }
    if (rc) return rc;
    fwrite(y.data(), 4, y.size(), stdout);
    fwrite(ss.data(), 4, ss.size(), stdout);
    return 0;
}
