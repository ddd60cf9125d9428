//! The dependency rules of the architecture, checked on `cargo metadata`:
//! - the SDKs (`kiln-sdk`, `kiln-sampler`) depend on no other Kiln crate;
//! - a backend depends only on the SDK and on shared backend crates (libraries under
//!   `backends/`);
//! - the host (`host/`) never links a backend, directly or through another crate;
//! - a sampler (the built-ins and the examples, each built on its own for wasm32) depends only
//!   on the sampler SDK.

use kiln_e2e::workspace;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate of a workspace and the local (path) crates it depends on, any kind of dependency.
struct Crate {
    dir: PathBuf,
    deps: Vec<PathBuf>,
}

/// Local crates of the workspace (or single package) whose manifest is `manifest`, by name.
fn local_crates(manifest: &Path) -> BTreeMap<String, Crate> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo metadata {}: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let dir_of = |p: &str| {
        Path::new(p)
            .parent()
            .unwrap()
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from(p))
    };
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| d["path"].as_str())
                .map(|s| PathBuf::from(s).canonicalize().unwrap_or_else(|_| s.into()))
                .collect();
            (
                p["name"].as_str().unwrap().to_string(),
                Crate {
                    dir: dir_of(p["manifest_path"].as_str().unwrap()),
                    deps,
                },
            )
        })
        .collect()
}

fn root() -> PathBuf {
    workspace().canonicalize().unwrap()
}

fn under(p: &Path, dir: &str) -> bool {
    p.starts_with(root().join(dir))
}

#[test]
fn dependency_rules_hold() {
    let ws = local_crates(&workspace().join("Cargo.toml"));
    let by_dir: BTreeMap<PathBuf, &str> = ws
        .iter()
        .map(|(n, c)| (c.dir.clone(), n.as_str()))
        .collect();
    let name_of = |d: &Path| by_dir.get(d).copied().unwrap_or("an outside crate");
    let sdk = root().join("sdk");
    let sampler_sdk = root().join("sdk/sampler");
    let mut checked = BTreeSet::new();
    for (name, c) in &ws {
        if c.dir == sdk || c.dir == sampler_sdk {
            assert!(
                c.deps.is_empty(),
                "{name} (an SDK) depends on {:?}",
                c.deps.iter().map(|d| name_of(d)).collect::<Vec<_>>()
            );
            checked.insert(name.clone());
        }
        if under(&c.dir, "backends") {
            for d in &c.deps {
                assert!(
                    *d == sdk || under(d, "backends"),
                    "backend {name} depends on {} ({}), which is neither the SDK nor a shared backend crate",
                    name_of(d),
                    d.display()
                );
            }
            checked.insert(name.clone());
        }
        if under(&c.dir, "host") {
            // Transitively: nothing reachable from a host crate lies under backends/.
            let mut stack = c.deps.clone();
            let mut seen = BTreeSet::new();
            while let Some(d) = stack.pop() {
                if !seen.insert(d.clone()) {
                    continue;
                }
                assert!(
                    !under(&d, "backends"),
                    "host crate {name} links the backend {}",
                    name_of(&d)
                );
                if let Some(n) = by_dir.get(&d) {
                    stack.extend(ws[*n].deps.iter().cloned());
                }
            }
            checked.insert(name.clone());
        }
    }
    for want in [
        "kiln-sdk",
        "kiln-sampler",
        "kiln-backend-cpu",
        "kiln-runtime",
        "kiln",
    ] {
        assert!(checked.contains(want), "{want} was not checked");
    }
    // Samplers: the built-ins' workspace and the Rust example.
    let mut samplers = 0;
    for manifest in [
        "samplers/builtin/Cargo.toml",
        "samplers/examples/rust-ban/Cargo.toml",
    ] {
        for (name, c) in local_crates(&workspace().join(manifest)) {
            for d in &c.deps {
                assert!(
                    *d == sampler_sdk,
                    "sampler {name} depends on {}, not only on the sampler SDK",
                    d.display()
                );
            }
            samplers += 1;
        }
    }
    assert!(samplers >= 5, "{samplers} sampler crates found");
}
