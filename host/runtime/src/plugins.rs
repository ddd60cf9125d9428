//! Backend discovery and selection: finds backend libraries next to the executable, in
//! `$KILN_BACKEND_PATH` and at `--backend PATH`, checks each one's ABI header, and picks the
//! backend that scores best for the model at hand (architecture and tensor types), so that
//! e.g. an FP4 backend wins for MXFP4 models and a generic GPU backend for K-quant models.

use anyhow::{anyhow, bail, Result};
use kiln_sdk::abi::client::{BackendDescription, BackendLib, Device};
use kiln_sdk::abi::{KilnBackendHeader, ENTRY_SYMBOL};
use kiln_sdk::gguf::Gguf;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A backend library that passed the ABI checks.
pub struct Backend {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The checked library.
    pub lib: BackendLib,
    /// Name, version, description.
    pub desc: BackendDescription,
    /// Its devices.
    pub devices: Vec<Device>,
    /// Score for this machine (0 = unusable).
    pub score: u32,
    /// Why that score.
    pub reason: String,
}

impl Backend {
    /// How well this backend runs the model in `gguf`: the backend's own per-model score, or
    /// for a library that predates per-model scoring (ABI 2.0), its machine score when the
    /// SDK's model code knows the architecture and the library accepts every tensor type.
    pub fn score_model(&self, gguf: &Gguf<'_>) -> (u32, String) {
        if self.score == 0 {
            return (0, self.reason.clone());
        }
        match self.lib.score_model(gguf) {
            Some(Ok((s, why))) => (s, sanitize(&why)),
            Some(Err(e)) => (
                0,
                format!("score_model failed: {}", sanitize(&e.to_string())),
            ),
            None => {
                let lib = &self.lib;
                match kiln_sdk::model::check_support(gguf, |t| {
                    lib.supports_type(t).unwrap_or(false)
                }) {
                    Ok(summary) => (
                        self.score,
                        format!(
                            "{summary}; {} (no per-model score: ABI 2.{} backend)",
                            self.reason,
                            self.lib.abi_minor()
                        ),
                    ),
                    Err(why) => (0, why),
                }
            }
        }
    }
}

/// A backend chosen for a model, and why.
pub struct Chosen {
    /// The backend.
    pub backend: Backend,
    /// Its score for the model.
    pub score: u32,
    /// The reason it gave.
    pub reason: String,
}

/// Text from a library or a model file, made safe for a terminal or a log line: control
/// characters are escaped.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A library found during discovery, loaded or refused.
pub struct Candidate {
    /// Its path.
    pub path: PathBuf,
    /// The backend, or why it was refused.
    pub outcome: std::result::Result<Backend, String>,
}

fn is_backend_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.contains("kiln_backend")
        && [".so", ".dylib", ".dll"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Directories and files searched: the executable's directory, then `$KILN_BACKEND_PATH`
/// (`:`-separated directories or files).
pub fn search_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir);
    }
    if let Some(v) = std::env::var_os("KILN_BACKEND_PATH") {
        out.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    out
}

/// Loads and checks one library. Errors say exactly why it was refused.
pub fn load(path: &Path) -> std::result::Result<Backend, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a file".into());
    }
    // SAFETY: loading a library runs its initialisers; backend libraries are code the user chose
    // to install. Nothing of it is called before its header passes the checks below.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("not a loadable library: {e}"))?;
    // SAFETY: the symbol is a static `KilnBackendHeader`; we take its address only.
    let header: *const KilnBackendHeader = unsafe {
        let sym = lib
            .get::<*const KilnBackendHeader>(format!("{ENTRY_SYMBOL}\0").as_bytes())
            .map_err(|_| format!("not a Kiln backend: no `{ENTRY_SYMBOL}` symbol"))?;
        *sym
    };
    // SAFETY: `header` points at the library's exported header, kept alive by `lib`.
    let lib = unsafe { BackendLib::new(header, Arc::new(lib)) }?;
    let mut desc = lib
        .describe()
        .map_err(|e| format!("get_info failed: {e}"))?;
    desc.name = sanitize(&desc.name);
    desc.version = sanitize(&desc.version);
    desc.description = sanitize(&desc.description);
    let devices = (0..desc.n_devices.min(64))
        .map(|i| lib.device(i))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("get_device failed: {e}"))?;
    let (score, reason) = lib.score().map_err(|e| format!("get_score failed: {e}"))?;
    let reason = sanitize(&reason);
    Ok(Backend {
        path: path.to_path_buf(),
        lib,
        desc,
        devices,
        score,
        reason,
    })
}

/// Every backend library in the search paths, loaded or refused (deduplicated by path).
pub fn discover() -> Vec<Candidate> {
    let mut files = Vec::new();
    for p in search_paths() {
        if p.is_file() {
            files.push(p);
        } else if let Ok(rd) = std::fs::read_dir(&p) {
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_backend_file(p))
                .collect();
            found.sort();
            files.extend(found);
        }
    }
    let mut seen = std::collections::HashSet::new();
    files
        .into_iter()
        .filter(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())))
        .map(|path| {
            let outcome = load(&path);
            Candidate { path, outcome }
        })
        .collect()
}

/// Picks a backend: `choice` is a path to a library, a backend name, or `None` for the best
/// usable backend found.
pub fn choose(choice: Option<&str>) -> Result<Backend> {
    if let Some(c) = choice {
        let p = Path::new(c);
        if c.contains(std::path::MAIN_SEPARATOR) || p.is_file() {
            let b = load(p).map_err(|why| anyhow!("backend {c} refused: {why}"))?;
            if b.score == 0 {
                bail!(
                    "backend {} cannot run on this machine: {}",
                    b.desc.name,
                    b.reason
                );
            }
            return Ok(b);
        }
    }
    let candidates = discover();
    let summary = |cands: &[Candidate]| -> String {
        if cands.is_empty() {
            return format!(
                "no backend libraries found (searched {})",
                search_paths()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        cands
            .iter()
            .map(|c| match &c.outcome {
                Ok(b) => format!(
                    "{} ({}): score {} ({})",
                    b.desc.name,
                    c.path.display(),
                    b.score,
                    b.reason
                ),
                Err(why) => format!("{}: refused: {why}", c.path.display()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut usable: Vec<Backend> = Vec::new();
    let mut refused = Vec::new();
    for c in candidates {
        match c.outcome {
            Ok(b) if choice.is_none_or(|n| n == b.desc.name) => usable.push(b),
            other => refused.push(Candidate {
                path: c.path,
                outcome: other,
            }),
        }
    }
    usable.retain(|b| b.score > 0 || choice.is_some());
    usable.sort_by_key(|b| std::cmp::Reverse(b.score));
    match (usable.into_iter().next(), choice) {
        (Some(b), Some(_)) if b.score == 0 => {
            bail!(
                "backend {} cannot run on this machine: {}",
                b.desc.name,
                b.reason
            )
        }
        (Some(b), _) => Ok(b),
        (None, Some(name)) => bail!("no usable backend named '{name}': {}", summary(&refused)),
        (None, None) => bail!("no usable backend: {}", summary(&refused)),
    }
}

/// Every usable backend ranked for the model in `gguf`, best first, with its score and reason,
/// plus the libraries that were refused or score 0 (with why).
pub fn rank_for(gguf: &Gguf<'_>) -> (Vec<Chosen>, Vec<(PathBuf, String)>) {
    let mut usable = Vec::new();
    let mut refused = Vec::new();
    for c in discover() {
        match c.outcome {
            Ok(b) => {
                let (score, reason) = b.score_model(gguf);
                if score > 0 {
                    usable.push(Chosen {
                        backend: b,
                        score,
                        reason,
                    });
                } else {
                    refused.push((c.path, format!("{}: {reason}", b.desc.name)));
                }
            }
            Err(why) => refused.push((c.path, why)),
        }
    }
    usable.sort_by_key(|c| std::cmp::Reverse(c.score));
    (usable, refused)
}

/// Picks the backend for the model in `gguf`: `choice` is a library path or a backend name
/// (which must be able to run the model), or `None` for the best-scoring one.
pub fn choose_for(choice: Option<&str>, gguf: &Gguf<'_>) -> Result<Chosen> {
    if let Some(c) = choice {
        let b = choose(Some(c))?;
        let (score, reason) = b.score_model(gguf);
        if score == 0 {
            bail!("backend {} cannot run this model: {reason}", b.desc.name);
        }
        return Ok(Chosen {
            backend: b,
            score,
            reason,
        });
    }
    let (usable, refused) = rank_for(gguf);
    match usable.into_iter().next() {
        Some(c) => Ok(c),
        None => {
            let why: Vec<String> = refused
                .iter()
                .map(|(p, w)| format!("{}: {w}", p.display()))
                .collect();
            if why.is_empty() {
                bail!(
                    "no backend libraries found (searched {})",
                    search_paths()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            bail!("no backend can run this model: {}", why.join("; "))
        }
    }
}
