//! Bit-exact comparison of `kiln_sdk::quant::dequantize_row` with the `gguf` Python package.
//!
//! `dequant_ref.py` (next to this file) dequantizes the same bytes with `gguf.quants` and the
//! f32 outputs are compared by bit pattern. Without `python3` + `gguf` + `numpy`, or without
//! the models, a test prints "skipped: <why>" and passes, unless `KILN_REQUIRE_MODELS=1`.

use bytemuck::Pod;
use kiln_sdk::quant::blocks::{
    BlockMxfp4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8_0,
};
use kiln_sdk::quant::{dequantize_row, GgmlType};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether missing prerequisites must fail the test instead of skipping it.
fn required() -> bool {
    std::env::var("KILN_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

/// Prints the skip reason, or panics when prerequisites are required.
fn skip(why: &str) {
    assert!(!required(), "KILN_REQUIRE_MODELS=1 but {why}");
    println!("skipped: {why}");
}

/// `Err(reason)` when python3 with gguf and numpy is not available.
fn python_ready() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import numpy, gguf.quants"])
        .output()
    {
        Err(e) => Err(format!("cannot run python3: {e}")),
        Ok(o) if !o.status.success() => Err(format!(
            "python3 lacks the gguf/numpy packages: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("kiln-dequant-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `dequant_ref.py` on a jobs file (one tab-separated job per line).
fn run_reference(dir: &Path, jobs: &[String]) {
    let jobs_path = dir.join("jobs.tsv");
    std::fs::write(&jobs_path, jobs.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dequant_ref.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&jobs_path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "dequant_ref.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compares our output with the reference file bit for bit, naming the first mismatch.
fn compare(what: &str, ours: &[f32], reference: &Path) {
    let bytes = std::fs::read(reference).unwrap();
    assert_eq!(
        bytes.len(),
        ours.len() * 4,
        "{what}: reference has {} floats, ours {}",
        bytes.len() / 4,
        ours.len()
    );
    let theirs = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let mut mismatches = ours
        .iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a.to_bits() != *b);
    if let Some((i, (a, b))) = mismatches.next() {
        let more = mismatches.count();
        panic!(
            "{what}: element {i} differs: ours {a:e} ({:#010x}), gguf-py {:e} ({b:#010x}); \
             {more} more mismatches",
            a.to_bits(),
            f32::from_bits(b)
        );
    }
}

/// splitmix64: a small seeded generator, enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A finite f16 of either sign with magnitude in about [2^-14, 2^5), zero or subnormal
    /// one time in sixteen.
    fn f16(&mut self) -> u16 {
        let r = self.next();
        let sign = ((r & 1) as u16) << 15;
        let mantissa = ((r >> 1) & 0x3FF) as u16;
        let exp = if (r >> 11) & 15 == 0 {
            0
        } else {
            1 + ((r >> 16) % 19) as u16
        };
        sign | (exp << 10) | mantissa
    }
}

/// Random blocks of `B` with every f16 scale replaced through `fix`.
fn random_blocks<B: Pod>(rng: &mut Rng, n: usize, fix: impl Fn(&mut B, &mut Rng)) -> Vec<u8> {
    let size = std::mem::size_of::<B>();
    let mut bytes = rng.bytes(n * size);
    for chunk in bytes.chunks_exact_mut(size) {
        let mut block: B = bytemuck::pod_read_unaligned(chunk);
        fix(&mut block, rng);
        chunk.copy_from_slice(bytemuck::bytes_of(&block));
    }
    bytes
}

/// Seeded random source bytes for `ty`: `n_blocks` blocks (or all bit patterns for 16-bit
/// float types).
fn random_source(ty: GgmlType, rng: &mut Rng, n_blocks: usize) -> Vec<u8> {
    let n = n_blocks;
    match ty {
        // Every bit pattern, NaN and infinity included.
        GgmlType::F16 | GgmlType::BF16 => (0..=u16::MAX).flat_map(u16::to_le_bytes).collect(),
        GgmlType::F32 => (0..n * 32)
            .flat_map(|_| {
                let x = f32::from_bits(rng.next() as u32);
                let x = if x.is_finite() { x } else { 1.0 };
                x.to_le_bytes()
            })
            .collect(),
        GgmlType::Q4_0 => random_blocks(rng, n, |b: &mut BlockQ4_0, r| b.d = r.f16()),
        GgmlType::Q4_1 => random_blocks(rng, n, |b: &mut BlockQ4_1, r| {
            b.d = r.f16();
            b.m = r.f16();
        }),
        GgmlType::Q5_0 => random_blocks(rng, n, |b: &mut BlockQ5_0, r| b.d = r.f16()),
        GgmlType::Q5_1 => random_blocks(rng, n, |b: &mut BlockQ5_1, r| {
            b.d = r.f16();
            b.m = r.f16();
        }),
        GgmlType::Q8_0 => random_blocks(rng, n, |b: &mut BlockQ8_0, r| b.d = r.f16()),
        GgmlType::Q2_K => random_blocks(rng, n, |b: &mut BlockQ2K, r| {
            b.d = r.f16();
            b.dmin = r.f16();
        }),
        GgmlType::Q3_K => random_blocks(rng, n, |b: &mut BlockQ3K, r| b.d = r.f16()),
        GgmlType::Q4_K => random_blocks(rng, n, |b: &mut BlockQ4K, r| {
            b.d = r.f16();
            b.dmin = r.f16();
        }),
        GgmlType::Q5_K => random_blocks(rng, n, |b: &mut BlockQ5K, r| {
            b.d = r.f16();
            b.dmin = r.f16();
        }),
        GgmlType::Q6_K => random_blocks(rng, n, |b: &mut BlockQ6K, r| b.d = r.f16()),
        // Every E8M0 exponent is finite (at most 2^127 before the doubled values), so the
        // raw random byte is kept.
        GgmlType::MXFP4 => random_blocks(rng, n, |_: &mut BlockMxfp4, _| {}),
        GgmlType::Q8_1 | GgmlType::Q8_K => Vec::new(),
    }
}

#[test]
fn random_blocks_match_gguf_py() {
    if let Err(why) = python_ready() {
        return skip(&why);
    }
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::MXFP4,
    ];
    let dir = TempDir::new("random");
    let mut rng = Rng(0x6B69_6C6E);
    let mut cases = Vec::new();
    let mut jobs = Vec::new();
    for ty in types {
        let src = random_source(ty, &mut rng, 512);
        let input = dir.0.join(format!("{ty}.bin"));
        let output = dir.0.join(format!("{ty}.f32"));
        std::fs::write(&input, &src).unwrap();
        jobs.push(format!(
            "raw\t{ty}\t{}\t{}",
            input.display(),
            output.display()
        ));
        cases.push((ty, src, output));
    }
    run_reference(&dir.0, &jobs);
    for (ty, src, output) in cases {
        let n = src.len() / ty.type_size() * ty.block_size();
        let mut ours = vec![0f32; n];
        dequantize_row(ty, &src, &mut ours).unwrap();
        compare(&format!("random {ty}"), &ours, &output);
    }
}

/// Where the test models live: `$KILN_MODELS`, else `~/.cache/kiln/models`.
fn models_dir() -> PathBuf {
    match std::env::var_os("KILN_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln/models")
        }
    }
}

/// Floats compared per tensor slice (1 MiB of output).
const SLICE_ELEMENTS: u64 = 1 << 18;

/// How the reference gets a tensor's bytes.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// `gguf.GGUFReader` finds the tensor by name: also checks our GGUF reader's offsets, but
    /// gguf-py takes seconds to parse a large vocabulary, so only the smallest model uses it.
    Reader,
    /// The bytes our GGUF reader found are handed over raw.
    Raw,
}

#[test]
fn real_model_tensors_match_gguf_py() {
    use kiln_sdk::gguf::Gguf;
    use std::collections::BTreeMap;

    if let Err(why) = python_ready() {
        return skip(&why);
    }
    // Each model, how the reference reads it and the tensor types it is known to hold.
    let models: [(&str, Source, &[GgmlType]); 3] = [
        (
            "smollm2-135m-instruct-q4_1.gguf",
            Source::Reader,
            &[GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32],
        ),
        (
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            Source::Raw,
            &[
                GgmlType::Q5_0,
                GgmlType::Q8_0,
                GgmlType::Q6_K,
                GgmlType::Q4_K,
                GgmlType::F32,
            ],
        ),
        (
            "gemma-3-270m-q4_k_m.gguf",
            Source::Raw,
            &[
                GgmlType::Q5_0,
                GgmlType::Q8_0,
                GgmlType::Q6_K,
                GgmlType::Q4_K,
                GgmlType::F32,
            ],
        ),
    ];
    let dir = TempDir::new("models");
    for (file, source, expected_types) in models {
        let path = models_dir().join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            skip(&format!("model {} not found", path.display()));
            continue;
        };
        let gguf = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));

        // Per type: the first, a middle and the last tensor in file order.
        let mut by_type: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, t) in gguf.tensors.iter().enumerate() {
            by_type.entry(t.ty as u32).or_default().push(i);
        }
        for ty in expected_types {
            assert!(
                by_type.contains_key(&(*ty as u32)),
                "{file}: no {ty} tensor (types changed?)"
            );
        }
        let mut jobs = Vec::new();
        let mut cases = Vec::new();
        for indices in by_type.values() {
            let mut picked = vec![
                indices[0],
                indices[indices.len() / 2],
                indices[indices.len() - 1],
            ];
            picked.dedup();
            for i in picked {
                let t = &gguf.tensors[i];
                let row_bytes = t.ty.bytes_for(t.row_len()).unwrap() as usize;
                let (row_len, n_rows) = (t.row_len(), t.n_rows());
                let rows = (SLICE_ELEMENTS / row_len).clamp(1, n_rows) as usize;
                let mut starts = vec![0];
                if n_rows as usize > rows {
                    starts.push(n_rows as usize - rows);
                }
                for start in starts {
                    let src = &t.data[start * row_bytes..(start + rows) * row_bytes];
                    let out = dir.0.join(format!("{}.f32", cases.len()));
                    jobs.push(match source {
                        Source::Reader => format!(
                            "tensor\t{}\t{}\t{start}\t{rows}\t{}",
                            path.display(),
                            t.name,
                            out.display()
                        ),
                        Source::Raw => {
                            let input = dir.0.join(format!("{}.bin", cases.len()));
                            std::fs::write(&input, src).unwrap();
                            format!("raw\t{}\t{}\t{}", t.ty, input.display(), out.display())
                        }
                    });
                    let what = format!(
                        "{file} {} ({}) rows {start}..{}",
                        t.name,
                        t.ty,
                        start + rows
                    );
                    cases.push((what, t.ty, src, rows * row_len as usize, out));
                }
            }
        }
        run_reference(&dir.0, &jobs);
        for (what, ty, src, n, out) in cases {
            let mut ours = vec![0f32; n];
            dequantize_row(ty, src, &mut ours).unwrap();
            compare(&what, &ours, &out);
            println!("ok: {what}");
        }
    }
}
