//! Shared helpers of the end-to-end tests: where the built binaries, the models and the
//! llama.cpp references are, and how a test skips when a model is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The cargo profile directory the tests were built into (`target/release` or `target/debug`).
pub fn profile_dir() -> PathBuf {
    // Test executables live in <profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf()
}

/// The `kiln` binary built beside these tests.
pub fn kiln_bin() -> PathBuf {
    let p = profile_dir().join(format!("kiln{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --release --workspace`)",
        p.display()
    );
    p
}

/// The CPU backend library built beside these tests.
pub fn cpu_backend() -> PathBuf {
    let name = format!(
        "{}kiln_backend_cpu{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let p = profile_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --release --workspace`)",
        p.display()
    );
    p
}

/// True when CI demands the real models (missing ones then fail instead of skipping).
pub fn models_required() -> bool {
    std::env::var("KILN_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

/// The path of a downloaded catalog model file, or `None` (after printing why) when absent.
pub fn model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln/models")
        });
    let p = dir.join(file);
    if p.exists() {
        return Some(p);
    }
    assert!(
        !models_required(),
        "model {} is missing and KILN_REQUIRE_MODELS=1",
        p.display()
    );
    eprintln!(
        "skipped: model {} is not downloaded (kiln pull)",
        p.display()
    );
    None
}

/// A llama.cpp reference file from `../shared/reference`.
pub fn reference(file: &str) -> Option<serde_json::Value> {
    let p = workspace().join("../shared/reference").join(file);
    match std::fs::read_to_string(&p) {
        Ok(s) => Some(serde_json::from_str(&s).expect("reference JSON parses")),
        Err(e) => {
            assert!(
                !models_required(),
                "reference {} unreadable: {e}",
                p.display()
            );
            eprintln!("skipped: reference {} unreadable: {e}", p.display());
            None
        }
    }
}

/// Runs `kiln` with `args` and extra environment; returns its output.
pub fn kiln(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(kiln_bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("kiln runs")
}

/// Stdout and stderr of an output as strings.
pub fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
