//! The kernels' dequantizers (`kernels/quant.cuh`: `deq32` and the quarter-chunk `deq8` that
//! the matrix-vector kernels use) against the SDK's reference dequantizers, for every weight
//! type, on the CPU: `tests/host/dequant.cpp` builds them with a C++ compiler over host
//! stand-ins for the CUDA built-ins. No GPU is needed; where no C++ compiler is found the test
//! skips and says so (`KILN_REQUIRE_CXX=1` makes that a failure, as CI sets).

use kiln_backend_cuda::ops::kernel_type;
use kiln_sdk::quant::random::{random_tensor, Rng};
use kiln_sdk::quant::{dequantize_row, GgmlType};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn compiler() -> Option<String> {
    for cxx in [
        std::env::var("CXX").unwrap_or_default().as_str(),
        "c++",
        "g++",
        "clang++",
    ] {
        if !cxx.is_empty()
            && Command::new(cxx)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return Some(cxx.to_string());
        }
    }
    None
}

fn build() -> Option<PathBuf> {
    let Some(cxx) = compiler() else {
        assert!(
            std::env::var("KILN_REQUIRE_CXX").as_deref() != Ok("1"),
            "KILN_REQUIRE_CXX=1 but no C++ compiler (c++, g++, clang++) was found"
        );
        eprintln!("skipped: no C++ compiler (c++, g++, clang++) found");
        return None;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/host/dequant.cpp");
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-host-dequant");
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-w", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("runs the C++ compiler");
    assert!(
        out.status.success(),
        "{cxx} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Runs the host build on `blocks` blocks of `ty`; returns (deq32 values, deq8 values).
fn host_dequant(exe: &Path, ty: GgmlType, blocks: usize, data: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs the host dequantizer");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{} {blocks} {}\n", ty as u32, data.len()).as_bytes())
        .and_then(|_| stdin.write_all(data))
        .expect("writes the blocks");
    drop(stdin);
    let out = child.wait_with_output().expect("host dequantizer output");
    assert!(
        out.status.success(),
        "host dequantizer failed for {ty}: {:?}",
        out.status
    );
    let v: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n = v.len() / 2;
    (v[..n].to_vec(), v[n..].to_vec())
}

#[test]
fn kernel_dequantizers_match_the_sdk() {
    let Some(exe) = build() else { return };
    let mut rng = Rng::new(0xdec0de);
    // Every type the backend has kernels for.
    for ty in GgmlType::ALL
        .into_iter()
        .filter(|&t| kernel_type(t).is_some())
    {
        let n = 256 * 12;
        let data = random_tensor(ty, n, 0.7, &mut rng);
        // The kernels read float types in 32-value chunks, as if in blocks of 32.
        let blocks = n / ty.block_size().max(32);
        let mut want = vec![0f32; n];
        dequantize_row(ty, &data, &mut want).expect("reference dequantizes");
        let (d32, d8) = host_dequant(&exe, ty, blocks, &data);
        assert_eq!(d32.len(), n, "{ty}: deq32 values");
        assert_eq!(d8.len(), n, "{ty}: deq8 values");
        for (name, got) in [("deq32", &d32), ("deq8", &d8)] {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // The same products, maybe in another order: within an ulp or two.
                let tol = 4.0 * f32::EPSILON * w.abs().max(1e-30);
                assert!(
                    (g - w).abs() <= tol,
                    "{ty} {name}: value {i} is {g}, the SDK gives {w}"
                );
            }
        }
        // deq8 is deq32 cut in quarters: the same bits.
        for (i, (a, b)) in d32.iter().zip(&d8).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{ty}: deq8 value {i} differs from deq32"
            );
        }
        eprintln!("{ty}: {n} values match");
    }
}
