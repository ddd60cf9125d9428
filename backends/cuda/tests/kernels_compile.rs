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
    let names = kiln_backend_cuda::ops::all_kernel_names();
    let (maj, min) = nvrtc::version().expect("NVRTC version");
    eprintln!(
        "NVRTC {maj}.{min}: {} kernels",
        names.iter().map(Vec::len).sum::<usize>()
    );
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
        // Every kernel the backend looks up in a unit is in that unit's symbol table.
        for ((u, bin), names) in units.iter().zip(&bins).zip(&names) {
            for n in names {
                assert!(
                    bin.windows(n.len() + 1)
                        .any(|w| &w[..n.len()] == n.as_bytes() && w[n.len()] == 0),
                    "{arch}: kernel {n} missing from unit {}'s cubin",
                    u.name
                );
            }
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

/// The units' kernel lists (what the backend looks up, unit by unit) name every kernel once,
/// including the macro-generated ones of each part.
#[test]
fn each_kernel_is_looked_up_in_one_unit() {
    let names = kiln_backend_cuda::ops::all_kernel_names();
    assert_eq!(names.len(), sources::units().len());
    let mut all: Vec<&String> = names.iter().flatten().collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a kernel is listed by two units");
    for k in [
        "mmv_f32_r1",
        "mmv_glu_q4_k_r16",
        "mmv_exp_mxfp4",
        "embed_q6_k",
        "mmv_seg_r1",
        "mmv_seg_r16",
        "mmq_q5_0_d",
        "mmq_glu_q6_k_p",
        "mmq_seg_d",
        "mmq_seg_p",
        "rms_norm",
        "attn_split",
        "rope_kv_store",
        "stats_cands",
    ] {
        assert!(all.iter().any(|n| *n == k), "{k} is not looked up");
    }
    // 14 types x (10 mmv + exp + embed) + 5 seg + 11 types x 4 mmq + 2 seg, plus the rest.
    assert!(n > 14 * 12 + 5 + 11 * 4 + 2, "{n} kernels");
}
