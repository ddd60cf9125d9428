//! Compiles Kiln's CUDA kernels into the on-disk cache for the architectures given
//! (`sm_80 sm_90 ...`), so that a machine (or container image) starts without compiling.
//! Needs NVRTC, not a GPU: `KILN_CUDA_CACHE=DIR cargo run --release -p kiln-backend-cuda
//! --example precompile -- sm_90`.

fn main() {
    let archs: Vec<String> = std::env::args().skip(1).collect();
    if archs.is_empty() {
        eprintln!("usage: precompile sm_XY [sm_XY ...]");
        std::process::exit(2);
    }
    let units = kiln_cuda::sources::units();
    for arch in archs {
        let t0 = std::time::Instant::now();
        match kiln_cuda::nvrtc::compile_units_cached(&units, &arch) {
            Ok((bins, cached)) => println!(
                "{arch}: {} units, {} bytes ({cached} already cached) in {:.1} s",
                bins.len(),
                bins.iter().map(Vec::len).sum::<usize>(),
                t0.elapsed().as_secs_f32()
            ),
            Err(e) => {
                eprintln!("{arch}: {e}");
                std::process::exit(1);
            }
        }
    }
}
