//! Plugin loading end to end: the host lists, scores and refuses backend libraries with clear
//! reasons, never calling into a library whose ABI does not match (those variants abort if any
//! of their functions is called).

use kiln_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cc(args: &[&str], src: &Path, out: &Path) -> bool {
    cc_with(&workspace().join("sdk/include"), args, src, out)
}

fn cc_with(inc: &Path, args: &[&str], src: &Path, out: &Path) -> bool {
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-std=c11", "-Wall", "-Werror", "-I"])
        .arg(inc)
        .args(args)
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg("-lm")
        .status();
    st.is_ok_and(|s| s.success())
}

struct Plugins {
    dir: PathBuf,
}

fn build_plugins(tag: &str) -> Option<Plugins> {
    let dir = std::env::temp_dir().join(format!("kiln-plugins-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = workspace().join("examples/c-backend/null_backend.c");
    if !cc(&[], &src, &dir.join("libkiln_backend_cnull.so")) {
        assert!(!models_required(), "no C compiler");
        eprintln!("skipped: no working C compiler");
        return None;
    }
    assert!(cc(
        &["-DTEST_ABI_MAJOR=99", "-DTEST_ABORT_ON_CALL"],
        &src,
        &dir.join("libkiln_backend_future.so")
    ));
    assert!(cc(
        &["-DTEST_FINGERPRINT=0x1234ull", "-DTEST_ABORT_ON_CALL"],
        &src,
        &dir.join("libkiln_backend_skewed.so")
    ));
    let empty = dir.join("empty.c");
    std::fs::write(&empty, "int kiln_unrelated_symbol = 1;\n").unwrap();
    assert!(cc(&[], &empty, &dir.join("libkiln_backend_nosymbol.so")));
    std::fs::write(
        dir.join("libkiln_backend_garbage.so"),
        b"\x7fELF this is not really a library",
    )
    .unwrap();
    Some(Plugins { dir })
}

impl Drop for Plugins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn backends_lists_good_and_refused_libraries() {
    let Some(p) = build_plugins("list") else {
        return;
    };
    let o = kiln(
        &["backends"],
        &[("KILN_BACKEND_PATH", p.dir.to_str().unwrap())],
    );
    let (out, err) = texts(&o);
    assert!(o.status.success(), "kiln backends failed: {err}");
    // The real CPU backend beside the executable is found and usable.
    assert!(
        out.contains("cpu ") && (out.contains("score:   100") || out.contains("score:   50")),
        "{out}"
    );
    // The C example loads, with score 0 and its reason.
    assert!(out.contains("c-null 0.1.0"), "{out}");
    assert!(
        out.contains("score:   0 (example backend: it has no device"),
        "{out}"
    );
    // Each broken library is refused with the exact reason.
    assert!(
        out.contains("incompatible backend ABI: the library was built for ABI 99.1, SDK c-example; this host speaks ABI 2.1"),
        "{out}"
    );
    assert!(
        out.contains("layout fingerprint 0x0000000000001234"),
        "{out}"
    );
    assert!(out.contains("no `kiln_backend_header` symbol"), "{out}");
    assert!(out.contains("not a loadable library"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn forcing_a_refused_backend_is_a_clear_error() {
    let Some(p) = build_plugins("force") else {
        return;
    };
    // The model is opened first, so use a real one: the backend refusal is what the user sees.
    let Some(model) = model("smollm2-135m-instruct-q4_1.gguf") else {
        return;
    };
    for (lib, want) in [
        ("libkiln_backend_future.so", "built for ABI 99.1"),
        ("libkiln_backend_skewed.so", "layout fingerprint"),
        ("libkiln_backend_garbage.so", "not a loadable library"),
        ("libkiln_backend_cnull.so", "cannot run"),
    ] {
        let path = p.dir.join(lib);
        let o = kiln(
            &[
                "run",
                "-m",
                model.to_str().unwrap(),
                "--backend",
                path.to_str().unwrap(),
                "-p",
                "hi",
                "-n",
                "1",
            ],
            &[],
        );
        let (_, err) = texts(&o);
        assert!(!o.status.success(), "{lib} was accepted");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{lib}: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "error is one line: {err}"
        );
    }
    let o = kiln(
        &[
            "run",
            "-m",
            model.to_str().unwrap(),
            "--backend",
            "c-null",
            "-p",
            "hi",
        ],
        &[("KILN_BACKEND_PATH", p.dir.to_str().unwrap())],
    );
    let (_, err) = texts(&o);
    assert!(
        !o.status.success() && err.contains("cannot run on this machine"),
        "{err}"
    );
}

/// A backend built against the kept ABI 2.0 header (the previous minor): it loads, the
/// capabilities added in 2.1 (per-model scoring, lookup by name) are reported absent, and it
/// generates through the host.
#[test]
fn a_backend_of_the_previous_minor_loads_and_runs() {
    let Some(model) = model("smollm2-135m-instruct-q4_1.gguf") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kiln-plugins-abi20-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixtures = workspace().join("tests/fixtures/abi-2.0");
    let lib = dir.join("libkiln_backend_echo.so");
    if !cc_with(&fixtures, &[], &fixtures.join("echo_backend.c"), &lib) {
        assert!(!models_required(), "the ABI 2.0 fixture does not compile");
        eprintln!("skipped: no working C compiler");
        return;
    }
    let env = [("KILN_BACKEND_PATH", dir.to_str().unwrap())];
    let o = kiln(&["backends", "-m", model.to_str().unwrap()], &env);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("c-echo 2.0.0") && out.contains("(ABI 2.0)"),
        "{out}"
    );
    assert!(out.contains("no per-model score: ABI 2.0 backend"), "{out}");
    // The CPU backend scores higher and is chosen; the fixture is used when forced.
    assert!(out.contains("chosen for this model: cpu"), "{out}");
    // "Hello" → the fixture predicts the next ids, one after the other.
    let tok = kiln_runtime::tokenizer::Tokenizer::from_gguf(
        kiln_runtime::model_file::ModelFile::open(&model)
            .unwrap()
            .gguf(),
    )
    .unwrap();
    let prompt = tok.encode("Hello", true).unwrap();
    let last = *prompt.last().unwrap();
    let want: Vec<u32> = (1..=4).map(|k| last + k).collect();
    let o = kiln(
        &[
            "run",
            "-m",
            model.to_str().unwrap(),
            "--backend",
            lib.to_str().unwrap(),
            "-p",
            "Hello",
            "-n",
            "4",
            "--temperature",
            "0",
        ],
        &[],
    );
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out.trim_end_matches('\n'), tok.decode(&want), "{err}");
    assert!(err.contains("backend c-echo 2.0.0"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
