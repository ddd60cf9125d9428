//! Every kernel of `kernels/` compiles with NVRTC for every architecture the backend serves.
//! Needs no GPU: NVRTC alone (the `nvidia-cuda-nvrtc` wheel in CI, found through
//! `$KILN_NVRTC`). Skips, saying so, where NVRTC is absent, unless `KILN_REQUIRE_NVRTC=1`.

use kiln_cuda::{nvrtc, sources};

#[test]
fn every_kernel_compiles_for_every_architecture() {
    if !nvrtc::present() {
        assert!(
            std::env::var("KILN_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "KILN_REQUIRE_NVRTC=1 but NVRTC was not found (set KILN_NVRTC to libnvrtc.so.13)"
        );
        eprintln!("skipped: NVRTC not found (set KILN_NVRTC to libnvrtc.so.13)");
        return;
    }
    let src = sources::program();
    let names = kiln_backend_cuda::ops::all_kernel_names(&src);
    let (maj, min) = nvrtc::version().expect("NVRTC version");
    eprintln!("NVRTC {maj}.{min}: {} kernels", names.len());
    // The oldest architecture served and the newest this NVRTC pair is checked on (sm_86/sm_89
    // add nothing the kernels use; each compile takes about 25 s on two cores).
    // The units, compiled in parallel as the backend does (no cache: every one compiles).
    let units = sources::units();
    for arch in ["sm_80", "sm_90"] {
        let t0 = std::time::Instant::now();
        let (bins, cached) = nvrtc::compile_units_cached_in(None, &units, arch)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(cached, 0);
        for (u, bin) in units.iter().zip(&bins) {
            assert!(
                bin.len() > 1000,
                "{arch} {}: cubin of {} bytes",
                u.name,
                bin.len()
            );
        }
        // Every kernel the backend looks up is in one unit's symbol table.
        for n in &names {
            assert!(
                bins.iter().any(|bin| bin
                    .windows(n.len() + 1)
                    .any(|w| &w[..n.len()] == n.as_bytes() && w[n.len()] == 0)),
                "{arch}: kernel {n} missing from every unit's cubin"
            );
        }
        eprintln!(
            "{arch}: {} units, {} bytes in {:.1} s",
            bins.len(),
            bins.iter().map(Vec::len).sum::<usize>(),
            t0.elapsed().as_secs_f32()
        );
    }
}

#[test]
fn compiled_kernels_are_cached_on_disk() {
    if !nvrtc::present() {
        eprintln!("skipped: NVRTC not found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-cuda-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Some(dir.as_path());
    let src = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] += 1.0f; }";
    assert!(!nvrtc::is_cached_in(d, "t", src, "sm_80"));
    let (a, cached) = nvrtc::compile_cached_in(d, "t", src, "sm_80").expect("compiles");
    assert!(!cached && nvrtc::is_cached_in(d, "t", src, "sm_80"));
    let (b, cached) = nvrtc::compile_cached_in(d, "t", src, "sm_80").expect("from the cache");
    assert!(cached && a == b);
    // Another architecture or source is another entry.
    assert!(!nvrtc::is_cached_in(d, "t", src, "sm_90"));
    assert!(!nvrtc::is_cached_in(d, "t", &format!("{src}\n"), "sm_80"));
    let _ = std::fs::remove_dir_all(&dir);
}
