//! Build script of `kiln-runtime`: compiles the built-in samplers (`samplers/builtin`, a
//! separate cargo workspace) for `wasm32-unknown-unknown` and generates the table that embeds
//! them (`$OUT_DIR/builtin_samplers.rs`); also records the wasmtime version for the names of
//! cached compiled modules.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in samplers: `samplers/builtin` builds `kiln_sampler_<name>.wasm` for each.
const BUILTINS: &[&str] = &["greedy", "chain", "mirostat", "constraint"];
const TARGET: &str = "wasm32-unknown-unknown";

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

/// Asks cargo to rerun this script when anything under `dir` changes, except build outputs.
fn watch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "target" || (name.starts_with('.') && name != ".cargo") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", e.path().display());
    }
}

/// The version of wasmtime in the workspace's lock file ("unknown" if it cannot be read).
fn wasmtime_version(root: &Path) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"wasmtime\"" {
            if let Some(v) = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = \""))
            {
                return v.trim_end_matches('"').to_string();
            }
        }
    }
    "unknown".into()
}

/// Whether the compiler has the standard library for `TARGET`.
fn target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return true; // let cargo report the problem
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // host/runtime → the workspace root.
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let builtin = root.join("samplers/builtin");
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=KILN_SKIP_BUILTIN_SAMPLERS");
    println!(
        "cargo:rustc-env=KILN_WASMTIME_VERSION={}",
        wasmtime_version(&root)
    );
    watch(&builtin);
    watch(&root.join("sdk/sampler"));

    let table = out_dir.join("builtin_samplers.rs");
    let manifest = builtin.join("Cargo.toml");
    let skip =
        std::env::var_os("KILN_SKIP_BUILTIN_SAMPLERS").is_some_and(|v| !v.is_empty() && v != "0");
    if skip || !manifest.is_file() {
        let why = if skip {
            "KILN_SKIP_BUILTIN_SAMPLERS is set"
        } else {
            "samplers/builtin/Cargo.toml is missing"
        };
        println!("cargo:warning=built-in samplers not embedded: {why}");
        let src = "/// No built-in samplers in this build.\npub static BUILTINS: &[(&str, &[u8])] = &[];\n";
        if let Err(e) = std::fs::write(&table, src) {
            fail(&format!("cannot write {}: {e}", table.display()));
        }
        return;
    }
    if !target_installed() {
        fail(&format!(
            "the built-in samplers need the Rust target {TARGET}; install it with \
             `rustup target add {TARGET}` (scripts/test and scripts/kiln do this)"
        ));
    }

    let target_dir = out_dir.join("wasm");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Run from the samplers' workspace so that its own `.cargo/config.toml`, if any, applies.
    cmd.current_dir(&builtin)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Its stdout would be read as build-script directives.
        .stdout(std::process::Stdio::from(std::io::stderr()));
    // The host build's flags and target settings must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_PANIC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo for the built-in samplers: {e}")));
    if !status.success() {
        fail(&format!(
            "building the built-in samplers ({}) failed",
            manifest.display()
        ));
    }

    let release = target_dir.join(TARGET).join("release");
    let mut src = String::from("/// The built-in samplers: (name, module bytes).\npub static BUILTINS: &[(&str, &[u8])] = &[\n");
    for name in BUILTINS {
        let wasm = release.join(format!("kiln_sampler_{name}.wasm"));
        if !wasm.is_file() {
            fail(&format!(
                "the built-in sampler build did not produce {}",
                wasm.display()
            ));
        }
        src.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    src.push_str("];\n");
    if let Err(e) = std::fs::write(&table, src) {
        fail(&format!("cannot write {}: {e}", table.display()));
    }
}
