//! The kernels' dequantizers (`kernels/quant.cuh`: `deq32` and the quarter-chunk `deq8` that
//! the matrix-vector kernels use) against the SDK's reference dequantizers, for every weight
//! type, on the CPU: `tests/host/dequant.cpp` builds them with a C++ compiler over host
//! stand-ins for the CUDA built-ins. `tests/host/matvec.cpp` likewise runs the matrix-vector
//! kernels' per-lane dot products (every K slice, the fused norm's weight and sum of squares)
//! one lane at a time, and the sums are checked against dot products of the SDK's values;
//! `tests/host/rope.cpp` runs the fused rope and cache store thread by thread against the two
//! kernels it replaces, and `tests/host/mmq.cpp` the integer tensor-core kernels with one OS
//! thread per CUDA thread (`tests/host/block.h`: shuffles and `mma` from the PTX fragment
//! layouts). No GPU is needed; where no C++ compiler is found the tests skip and say
//! so (`KILN_REQUIRE_CXX=1` makes that a failure, as CI sets).

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

/// Builds `tests/host/{name}.cpp`, or says why it can't.
fn build(name: &str) -> Option<PathBuf> {
    let Some(cxx) = compiler() else {
        assert!(
            std::env::var("KILN_REQUIRE_CXX").as_deref() != Ok("1"),
            "KILN_REQUIRE_CXX=1 but no C++ compiler (c++, g++, clang++) was found"
        );
        eprintln!("skipped: no C++ compiler (c++, g++, clang++) found");
        return None;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/host/{name}.cpp"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kiln-host-{name}"));
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-w", "-pthread", "-o"])
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

/// Runs a host build with `input` on its standard input; returns its output as f32 values.
fn run_host(exe: &Path, input: &[u8], what: &str) -> Vec<f32> {
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs the host build");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("writes the input");
    drop(stdin);
    let out = child.wait_with_output().expect("host build output");
    assert!(out.status.success(), "{what}: {:?}", out.status);
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Every type the backend has kernels for.
fn kernel_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|&t| kernel_type(t).is_some())
}

/// Runs the host dequantizers on `blocks` blocks of `ty`; returns (deq32 values, deq8 values).
fn host_dequant(exe: &Path, ty: GgmlType, blocks: usize, data: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let mut input = format!("{} {blocks} {}\n", ty as u32, data.len()).into_bytes();
    input.extend_from_slice(data);
    let v = run_host(exe, &input, &format!("host dequantizer, {ty}"));
    let n = v.len() / 2;
    (v[..n].to_vec(), v[n..].to_vec())
}

#[test]
fn kernel_dequantizers_match_the_sdk() {
    let Some(exe) = build("dequant") else { return };
    let mut rng = Rng::new(0xdec0de);
    for ty in kernel_types() {
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

/// Runs the host matrix-vector dot products; returns (y, per-row sums of squares).
#[allow(clippy::too_many_arguments)]
fn host_matvec(
    exe: &Path,
    ty: GgmlType,
    k: usize,
    n: usize,
    rows: usize,
    split: usize,
    w: &[u8],
    x: &[f32],
    norm: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let has_norm = norm.is_some() as i32;
    let head = format!(
        "{} {k} {n} {rows} {split} {has_norm}\n{}\n",
        ty as u32,
        w.len()
    );
    let mut input = head.into_bytes();
    input.extend_from_slice(w);
    input.extend(
        x.iter()
            .chain(norm.unwrap_or(&[]))
            .flat_map(|v| v.to_le_bytes()),
    );
    let v = run_host(exe, &input, &format!("host matvec, {ty}"));
    assert_eq!(v.len(), rows * n + rows, "{ty}: host matvec output length");
    (v[..rows * n].to_vec(), v[rows * n..].to_vec())
}

#[test]
fn matvec_lanes_cover_every_value_once() {
    let Some(exe) = build("matvec") else { return };
    let mut rng = Rng::new(0x5ca1e);
    let (n, rows) = (3usize, 2usize);
    for ty in kernel_types() {
        for k in [256usize, 768, 2048] {
            let data = random_tensor(ty, n * k, 0.5, &mut rng);
            let mut wf = vec![0f32; n * k];
            dequantize_row(ty, &data, &mut wf).expect("dequantizes");
            let x: Vec<f32> = (0..rows * k).map(|_| rng.symmetric()).collect();
            let nw: Vec<f32> = (0..k).map(|_| 1.0 + 0.3 * rng.symmetric()).collect();
            for split in [1usize, 2, 4] {
                for norm in [None, Some(&nw[..])] {
                    let (y, ss) = host_matvec(&exe, ty, k, n, rows, split, &data, &x, norm);
                    for r in 0..rows {
                        let xr = &x[r * k..(r + 1) * k];
                        if norm.is_some() {
                            let want: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
                            assert!(
                                (ss[r] as f64 - want).abs() <= 1e-4 * want,
                                "{ty} K={k} split {split}: sum of squares {} vs {want}",
                                ss[r]
                            );
                        }
                        for o in 0..n {
                            let wr = &wf[o * k..(o + 1) * k];
                            let (mut want, mut mag) = (0f64, 0f64);
                            for i in 0..k {
                                let xv = xr[i] as f64 * norm.map_or(1.0, |nw| nw[i] as f64);
                                want += wr[i] as f64 * xv;
                                mag += (wr[i] as f64 * xv).abs();
                            }
                            let got = y[r * n + o] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * mag + 1e-30,
                                "{ty} K={k} split {split} norm {}: row {r} output {o} is {got}, \
                                 want {want}",
                                norm.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `rope_kv_store` leaves q, k and the caches exactly as `rope` then `kv_store` do (the CUDA
/// backend launches it when an `attention` follows a `rope_qk` on the same q and k).
#[test]
fn fused_rope_and_cache_store_match_the_separate_kernels() {
    let Some(exe) = build("rope") else { return };
    let out = Command::new(&exe).output().expect("runs the host build");
    assert!(
        out.status.success(),
        "host rope: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the host build of the integer tensor-core kernels; returns (decode kernel's y, prompt
/// kernel's y).
#[allow(clippy::too_many_arguments)]
fn host_mmq(
    exe: &Path,
    ty: GgmlType,
    k: usize,
    n: usize,
    rows: usize,
    mode: u8,
    w: &[u8],
    x: &[f32],
    nw: &[f32],
    bias: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let wlen = if mode == 1 { w.len() / 2 } else { w.len() };
    let mut input = format!("{} {k} {n} {rows} {mode}\n{wlen}\n", ty as u32).into_bytes();
    input.extend_from_slice(w);
    let mut floats: Vec<f32> = x.to_vec();
    if mode != 0 {
        floats.extend_from_slice(nw);
    }
    if mode != 1 {
        floats.extend_from_slice(bias);
    }
    input.extend(floats.iter().flat_map(|v| v.to_le_bytes()));
    let v = run_host(exe, &input, &format!("host mmq, {ty}"));
    assert_eq!(v.len(), 2 * rows * n, "{ty}: host mmq output length");
    (v[..rows * n].to_vec(), v[rows * n..].to_vec())
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// The integer tensor-core kernels (`kernels/mmq.cu`), run thread by thread on the CPU with the
/// PTX fragment layouts: the decode and prompt kernels give the same bits, a row gives the same
/// bits alone as inside a batch, and the values are the dot products of the SDK's weights with x
/// up to the 8-bit rounding of x (at most half a step of each 32 values' scale per value).
#[test]
fn integer_tensor_core_kernels_agree_and_are_batch_invariant() {
    let Some(exe) = build("mmq") else { return };
    let mut rng = Rng::new(0x3319);
    let n = 24usize;
    for ty in
        kernel_types().filter(|t| !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
    {
        // One slice of K (8 chunks), then nine (136 chunks, the last slice partial: more
        // units than a decode block has warps, so it folds them over two rounds); 17 rows
        // span two decode block rows.
        for k in [256usize, 4352] {
            let rows = if k == 256 { 17 } else { 2 };
            let wg = random_tensor(ty, n * k, 0.5, &mut rng);
            let wu = random_tensor(ty, n * k, 0.5, &mut rng);
            let mut fg = vec![0f32; n * k];
            let mut fu = vec![0f32; n * k];
            dequantize_row(ty, &wg, &mut fg).expect("dequantizes");
            dequantize_row(ty, &wu, &mut fu).expect("dequantizes");
            let x: Vec<f32> = (0..rows * k).map(|_| rng.symmetric()).collect();
            let nw: Vec<f32> = (0..k).map(|_| 1.0 + 0.3 * rng.symmetric()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.symmetric()).collect();
            for mode in 0u8..3 {
                let w: Vec<u8> = if mode == 1 {
                    wg.iter().chain(&wu).copied().collect()
                } else {
                    wg.clone()
                };
                let (yd, yp) = host_mmq(&exe, ty, k, n, rows, mode, &w, &x, &nw, &bias);
                let what = format!("{ty} K={k} mode {mode}");
                for i in 0..rows * n {
                    assert_eq!(
                        yd[i].to_bits(),
                        yp[i].to_bits(),
                        "{what}: value {i}: decode kernel {} vs prompt kernel {}",
                        yd[i],
                        yp[i]
                    );
                }
                // A row alone gives the bits it has inside the batch (the last row: in the
                // second decode block row at 17 rows).
                for r in [rows - 1].into_iter().filter(|_| mode == 0) {
                    let xr = &x[r * k..(r + 1) * k];
                    let (ad, ap) = host_mmq(&exe, ty, k, n, 1, mode, &w, xr, &nw, &bias);
                    for o in 0..n {
                        assert_eq!(
                            ad[o].to_bits(),
                            yd[r * n + o].to_bits(),
                            "{what}: row {r} alone"
                        );
                        assert_eq!(
                            ap[o].to_bits(),
                            yd[r * n + o].to_bits(),
                            "{what}: row {r} alone"
                        );
                    }
                }
                // Values: the f64 dot products, within the 8-bit rounding of x.
                for r in 0..rows {
                    let xr = &x[r * k..(r + 1) * k];
                    let xn: Vec<f64> = (0..k)
                        .map(|i| xr[i] as f64 * if mode == 0 { 1.0 } else { nw[i] as f64 })
                        .collect();
                    let scale = if mode == 0 {
                        1.0
                    } else {
                        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
                        1.0 / (ss / k as f64 + 1e-5).sqrt()
                    };
                    let dot = |wf: &[f32], o: usize| {
                        let (mut s, mut tol) = (0f64, 0f64);
                        for c in 0..k / 32 {
                            let blk = &xn[c * 32..(c + 1) * 32];
                            let step = blk.iter().fold(0f64, |m, v| m.max(v.abs())) / 127.0;
                            for (i, &xv) in blk.iter().enumerate() {
                                let wv = wf[o * k + c * 32 + i] as f64;
                                s += wv * xv;
                                tol += wv.abs() * (0.5 * step + 1e-6 * xv.abs());
                            }
                        }
                        (s * scale, tol * scale * 1.01 + 1e-6)
                    };
                    for o in 0..n {
                        let got = yd[r * n + o] as f64;
                        let (want, tol) = match mode {
                            1 => {
                                let (g, tg) = dot(&fg, o);
                                let (u, tu) = dot(&fu, o);
                                let want = silu(g) * u;
                                // A first-order bound on silu(g) * u.
                                let tol = tg * (1.5 * u.abs() + tu) + silu(g).abs() * tu;
                                (want, tol + 1e-5 * want.abs())
                            }
                            _ => {
                                let (d, t) = dot(&fg, o);
                                (d + bias[o] as f64, t + 1e-6 * (d.abs() + 1.0))
                            }
                        };
                        assert!(
                            (got - want).abs() <= tol,
                            "{what}: row {r} output {o} is {got}, want {want} (tolerance {tol})"
                        );
                    }
                }
                eprintln!("{what}: {} values agree", rows * n);
            }
        }
    }
}
