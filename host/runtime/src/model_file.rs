//! A GGUF model file mapped into memory and parsed once, shared by the tokenizer and the
//! backend (which receives views into the same mapping: zero copies on the CPU).

use anyhow::{Context, Result};
use kiln_sdk::gguf::Gguf;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A parsed, memory-mapped GGUF file.
pub struct ModelFile {
    /// Path it was opened from.
    pub path: PathBuf,
    // Declared before `map` so it is dropped first; it borrows the mapping.
    gguf: Gguf<'static>,
    map: Arc<Mmap>,
}

impl ModelFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the file is mapped read-only; a model file changed while in use is the user's
        // problem, as in every mmap-based engine.
        let map = Arc::new(
            unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?,
        );
        // SAFETY: the mapping lives in `map`, which outlives `gguf` (field order, and every
        // borrower receives a clone of the Arc through `keep_alive`).
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let gguf = Gguf::parse(bytes)
            .with_context(|| format!("{} is not a valid GGUF file", path.display()))?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            gguf,
            map,
        })
    }

    /// The parsed file.
    pub fn gguf(&self) -> &Gguf<'static> {
        &self.gguf
    }

    /// An owner keeping the mapping alive (handed to the backend with the view).
    pub fn keep_alive(&self) -> Arc<dyn std::any::Any + Send + Sync> {
        self.map.clone()
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }
}
