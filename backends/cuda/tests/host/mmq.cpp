// Runs the integer tensor-core matmul kernels (kernels/mmq.cu) on the CPU, every CUDA thread an
// OS thread (block.h), both the decode (`_d`) and the prompt (`_p`) kernels on the same input.
// stdin: "type K N rows mode\n", then the weight bytes' count and the bytes (for mode 1 the up
// weight's after the gate's), x (rows x K f32), the norm weight (K f32; modes 1 and 2) and the
// bias (N f32; modes 0 and 2). Modes: 0 mmq (bias), 1 mmq_glu (norm, SiLU), 2 mmq_seg_{d,p}
// with one segment (norm, bias). stdout: y of the decode kernel (rows x N f32), then the
// prompt kernel's.
#include "block.h"
static float glu_act(int act, float x, float v) {
    if (act == 0) return x / (1.0f + expf(-x)) * v;
    return x * v;
}
#include "../../../../kernels/quant.cuh"
#include "../../../../kernels/mmq.cu"

template <int T>
static void run(int mode, const u8* W, const u8* Wu, const float* x, const float* nw,
                const float* bias, int K, int N, int rows, float* yd, float* yp) {
    const int S = mmq_slices(K), tpc = mmq_tpc(S);
    const unsigned td = 32 * (unsigned)mmq_dec_warps(K);
    const unsigned gd = (unsigned)((N + 8 * tpc - 1) / (8 * tpc)), gdy = (unsigned)((rows + 15) / 16);
    const unsigned gpy = (unsigned)((rows + MMQ_PRE_ROWS - 1) / MMQ_PRE_ROWS);
    // The prompt kernels read x quantized ahead (with the norm weight for modes 1 and 2).
    std::vector<u8> xq((size_t)rows * K);
    std::vector<MqMeta> xm((size_t)rows * (K / 32));
    const float* qnw = mode == 0 ? nullptr : nw;
    run_grid((unsigned)((K / 32 + 31) / 32), (unsigned)rows, 128,
             [&] { mq_quantize(x, K, qnw, K, rows, xq.data(), xm.data()); });
    if (mode == 0) {
        run_grid(gd, gdy, td, [&] {
            static float sm[MMQ_DEC_SMEM(1)];
            mmq_dec<T>(W, x, yd, K, N, rows, K, N, bias, 0, nullptr, 0.0f, blockIdx.x, sm);
        });
        run_grid((N + MMQ_PRE_COLS - 1) / MMQ_PRE_COLS, gpy, 128, [&] {
            static float ssm[MMQ_PRE_ROWS];
            mmq_pre<T>(W, x, yp, K, N, rows, K, N, bias, 0, nullptr, 0.0f, blockIdx.x, ssm,
                       xq.data(), xm.data());
        });
    } else if (mode == 1) {
        run_grid(gd, gdy, td, [&] {
            static float sm[MMQ_DEC_SMEM(2)];
            mmq_glu_dec<T>(W, Wu, x, yd, K, N, rows, K, N, 0, nw, 1e-5f, sm);
        });
        run_grid((N + MMQ_PRE_COLS / 2 - 1) / (MMQ_PRE_COLS / 2), gpy, 128, [&] {
            static float ssm[MMQ_PRE_ROWS];
            mmq_glu_pre<T>(W, Wu, x, yp, K, N, rows, K, N, 0, nw, 1e-5f, ssm, xq.data(),
                           xm.data());
        });
    } else {
        const int nbd = (int)gd, nbp = (N + MMQ_PRE_COLS - 1) / MMQ_PRE_COLS;
        run_grid(gd, gdy, td, [&] {
            mmq_seg_d(x, K, rows, K, nw, 1e-5f, W, bias, yd, T, N, N, nbd, nullptr, nullptr,
                      nullptr, 0, 0, 0, 0, nullptr, nullptr, nullptr, 0, 0, 0, 0);
        });
        run_grid((unsigned)nbp, gpy, 128, [&] {
            mmq_seg_p(x, K, rows, K, nw, 1e-5f, W, bias, yp, T, N, N, nbp, nullptr, nullptr,
                      nullptr, 0, 0, 0, 0, nullptr, nullptr, nullptr, 0, 0, 0, 0, xq.data(),
                      xm.data());
        });
    }
}

int main() {
    int type, K, N, rows, mode;
    if (scanf("%d %d %d %d %d", &type, &K, &N, &rows, &mode) != 5 || getchar() != '\n') return 2;
    long wbytes;
    if (scanf("%ld", &wbytes) != 1 || getchar() != '\n') return 2;
    std::vector<uint4> wg(wbytes / 16 + 1), wu(wbytes / 16 + 1);
    std::vector<float> x((long)rows * K), nw(K), bias(N), yd((long)rows * N, -1.0f),
        yp((long)rows * N, -2.0f);
    if ((long)fread(wg.data(), 1, wbytes, stdin) != wbytes) return 3;
    if (mode == 1 && (long)fread(wu.data(), 1, wbytes, stdin) != wbytes) return 3;
    if (fread(x.data(), 4, x.size(), stdin) != x.size()) return 3;
    if (mode != 0 && fread(nw.data(), 4, K, stdin) != (size_t)K) return 3;
    if (mode != 1 && fread(bias.data(), 4, N, stdin) != (size_t)N) return 3;
    const u8 *W = (const u8*)wg.data(), *Wu = (const u8*)wu.data();
    switch (type) {
#define CASE(T) \
    case T: run<T>(mode, W, Wu, x.data(), nw.data(), bias.data(), K, N, rows, yd.data(), yp.data()); break;
        CASE(T_Q4_0) CASE(T_Q4_1) CASE(T_Q5_0) CASE(T_Q5_1) CASE(T_Q8_0) CASE(T_MXFP4)
        CASE(T_Q2_K) CASE(T_Q3_K) CASE(T_Q4_K) CASE(T_Q5_K) CASE(T_Q6_K)
        default: return 4;
#undef CASE
    }
    fwrite(yd.data(), 4, yd.size(), stdout);
    fwrite(yp.data(), 4, yp.size(), stdout);
    return 0;
}
