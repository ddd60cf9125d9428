//! The `kiln` command line end to end: help, tokenize, inspect, malformed input, context
//! limits, bench and the catalog — each as a user would run it.

use kiln_e2e::*;

const SMOL: &str = "smollm2-135m-instruct-q4_1.gguf";

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "run", "chat", "tokenize", "inspect", "pull", "list", "bench", "backends",
    ] {
        let o = kiln(&[sub, "--help"], &[]);
        let (out, _) = texts(&o);
        assert!(
            o.status.success() && out.contains("Usage: kiln"),
            "{sub}: {out}"
        );
    }
    let o = kiln(&["--help"], &[]);
    assert!(texts(&o).0.contains("Commands:"));
}

#[test]
fn tokenize_matches_llama_cpp() {
    for (file, reference_file) in [
        (SMOL, "smollm2-135m-instruct-q4_1.json"),
        (
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.json",
        ),
        ("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.json"),
    ] {
        let Some(path) = model(file) else { continue };
        let Some(r) = reference(reference_file) else {
            continue;
        };
        for case in r["tokenization"].as_array().unwrap().iter().take(3) {
            let o = kiln(
                &[
                    "tokenize",
                    "-m",
                    path.to_str().unwrap(),
                    case["text"].as_str().unwrap(),
                ],
                &[],
            );
            let (out, err) = texts(&o);
            assert!(o.status.success(), "{err}");
            let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(got, case["ids"], "{file}: {}", case["name"]);
        }
    }
}

#[test]
fn inspect_shows_metadata_and_tensors() {
    let Some(path) = model(SMOL) else { return };
    let o = kiln(&["inspect", path.to_str().unwrap()], &[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("general.architecture") && out.contains("\"llama\""),
        "{out}"
    );
    assert!(
        out.contains("272 tensors") || out.contains("tensors: 272"),
        "{out}"
    );
    assert!(
        out.contains("token_embd.weight") && out.contains("Q8_0"),
        "{out}"
    );
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kiln-cli-{}-{name}", std::process::id()))
}

#[test]
fn malformed_models_are_refused_in_one_line() {
    let garbage = tmp("garbage.gguf");
    std::fs::write(&garbage, b"NOTAGGUF at all").unwrap();
    let empty = tmp("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let mut cases = vec![(garbage.clone(), "magic"), (empty.clone(), "")];
    let truncated = tmp("truncated.gguf");
    if let Some(path) = model(SMOL) {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        cases.push((truncated.clone(), "past"));
    }
    for (p, want) in &cases {
        for args in [
            vec!["inspect", p.to_str().unwrap()],
            vec!["run", "-m", p.to_str().unwrap(), "-p", "hi", "-n", "1"],
        ] {
            let o = kiln(&args, &[]);
            let (_, err) = texts(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.starts_with("error: ") && err.contains(want),
                "{args:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        }
    }
    for p in [garbage, empty, truncated] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn unknown_model_name_lists_the_catalog() {
    let o = kiln(&["run", "-m", "no-such-model", "-p", "hi"], &[]);
    let (_, err) = texts(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("smollm2-135m-instruct-q4_1") && err.contains("gemma-3-270m-q4_k_m"),
        "{err}"
    );
}

#[test]
fn list_shows_the_catalog() {
    let o = kiln(&["list"], &[]);
    let (out, _) = texts(&o);
    assert!(o.status.success());
    for name in [
        "smollm2-135m-instruct-q4_1",
        "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "qwen2.5-coder-1.5b-instruct-q4_k_m",
        "gemma-3-270m-q4_k_m",
    ] {
        assert!(out.contains(name), "{out}");
    }
}

#[test]
fn context_overflow_is_a_clear_stop_not_a_crash() {
    let Some(path) = model(SMOL) else { return };
    let p = path.to_str().unwrap();
    // A prompt longer than the context.
    let o = kiln(
        &[
            "run",
            "-m",
            p,
            "-p",
            "one two three four five six seven eight nine ten",
            "--ctx",
            "4",
        ],
        &[],
    );
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the context holds 4"), "{err}");
    // Generation that fills the context stops with that reason.
    let o = kiln(
        &[
            "run",
            "-m",
            p,
            "-p",
            "Once upon a time",
            "--ctx",
            "12",
            "--temperature",
            "0",
            "--ignore-eos",
        ],
        &[],
    );
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("stop: context full"), "{err}");
    assert!(!out.trim().is_empty());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(path) = model(SMOL) else { return };
    let p = path.to_str().unwrap();
    let run = |seed: &str| {
        texts(&kiln(
            &[
                "run",
                "-m",
                p,
                "-p",
                "My favourite food is",
                "-n",
                "16",
                "--seed",
                seed,
                "--temperature",
                "1.0",
            ],
            &[],
        ))
        .0
    };
    assert_eq!(run("7"), run("7"));
    let outs: std::collections::HashSet<String> =
        ["1", "2", "3", "4"].iter().map(|s| run(s)).collect();
    assert!(outs.len() > 1, "different seeds gave identical text");
}

/// `kiln run --chat` asking a model for the capital of France, greedily; the successful
/// stdout and stderr, or `None` when the model is not downloaded.
fn ask_capital(model_file: &str, extra: &[&str]) -> Option<(String, String)> {
    let path = model(model_file)?;
    let mut args = vec![
        "run",
        "-m",
        path.to_str().unwrap(),
        "--chat",
        "-p",
        "What is the capital of France?",
        "--temperature",
        "0",
    ];
    args.extend_from_slice(extra);
    let o = kiln(&args, &[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("Paris"), "{out}");
    Some((out, err))
}

#[test]
fn chat_mode_uses_the_template_and_stops_at_end_of_turn() {
    let Some((out, err)) = ask_capital("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", &["-n", "64"])
    else {
        return;
    };
    assert!(
        !out.contains("<|im_end|>") && !out.contains("<|im_start|>"),
        "{out}"
    );
    assert!(err.contains("stop: end of generation"), "{err}");
}

#[test]
fn bench_reports_json() {
    let Some(path) = model(SMOL) else { return };
    let o = kiln(
        &[
            "bench",
            "-m",
            path.to_str().unwrap(),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "2",
            "--json",
        ],
        &[],
    );
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["test"], "pp16");
    assert_eq!(rows[1]["test"], "tg4");
    assert!(rows[1]["median_ts"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[1]["samples_ts"].as_array().unwrap().len(), 2);
}

#[test]
fn flags_that_cannot_apply_are_refused_or_reported() {
    let Some(path) = model(SMOL) else { return };
    let m = path.to_str().unwrap();
    // bench honours --ctx, and refuses one too small for its tests.
    let o = kiln(
        &[
            "bench", "-m", m, "-p", "64", "-n", "2", "-r", "1", "--ctx", "32",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        texts(&o).1.contains("--ctx 32 is smaller"),
        "{}",
        texts(&o).1
    );
    // --show-reasoning needs --chat, and says so on a model without reasoning channels.
    let o = kiln(
        &["run", "-m", m, "-p", "hi", "-n", "1", "--show-reasoning"],
        &[],
    );
    assert!(!o.status.success());
    let o = kiln(
        &[
            "run",
            "-m",
            m,
            "--chat",
            "-p",
            "hi",
            "-n",
            "1",
            "--show-reasoning",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", texts(&o).1);
    assert!(
        texts(&o).1.contains("keeps no separate reasoning"),
        "{}",
        texts(&o).1
    );
}

#[test]
fn bench_runs_a_synthetic_model_and_reuses_its_file() {
    let dir = std::env::temp_dir().join(format!("kiln-synthetic-test-{}", std::process::id()));
    let file = dir.join("m.gguf");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "bench",
            "--synthetic",
            "llama-135m:q4_0",
            "--synthetic-out",
            file.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "2",
            "-r",
            "1",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        kiln(&a, &[])
    };
    let o = run(&[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["test"], "pp8");
    assert!(v[1]["median_ts"].as_f64().unwrap() > 0.0);
    // The file is a GGUF of the real shapes, reused by the next run.
    let bytes = std::fs::read(&file).unwrap();
    let g = kiln_sdk::gguf::Gguf::parse(&bytes).unwrap();
    assert_eq!(
        g.get_str("kiln.synthetic.spec").unwrap(),
        Some("llama-135m:q4_0")
    );
    assert_eq!(
        g.tensor("blk.29.ffn_down.weight").unwrap().dims,
        vec![1536, 576]
    );
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let o = run(&[]);
    assert!(o.status.success(), "{}", texts(&o).1);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        modified
    );
    // Bad specs are clear errors.
    let o = kiln(&["bench", "--synthetic", "qwen2-1.5b:mxfp4"], &[]);
    assert!(!o.status.success());
    assert!(texts(&o).1.contains("MoE shapes"), "{}", texts(&o).1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interactive_chat_keeps_the_conversation() {
    use std::io::Write;
    let Some(path) = model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let mut child = std::process::Command::new(kiln_bin())
        .args([
            "chat",
            "-m",
            path.to_str().unwrap(),
            "--temperature",
            "0",
            "-n",
            "48",
            "--ctx",
            "1024",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"My name is Ada. Reply with one short sentence.\nWhat is my name? Answer with just the name.\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    // The second answer needs the first turn: the cached conversation is reused.
    let second = out.trim_end().lines().last().unwrap_or_default();
    assert!(second.contains("Ada"), "{out}");
}

#[test]
fn qwen_1_5b_runs() {
    ask_capital(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        &["-n", "24", "--ctx", "512"],
    );
}

#[test]
fn sampling_flags_conflict_with_a_sampler_module() {
    let o = kiln(
        &["run", "-p", "hi", "--sampler", "greedy", "--top-k", "5"],
        &[],
    );
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--sampler") && err.contains("--top-k"),
        "{err}"
    );
}

#[test]
fn a_gpt_oss_file_is_inspected_and_scored() {
    let dir = std::env::temp_dir().join(format!("kiln-gpt-oss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-gpt-oss.gguf");
    std::fs::write(
        &path,
        kiln_sdk::conformance::synthetic_gpt_oss(3, 128, 4096),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let o = kiln(&["inspect", p], &[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("gpt-oss") && out.contains("blk.0.ffn_gate_exps.weight"),
        "{out}"
    );
    let o = kiln(&["backends", "-m", p], &[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("gpt-oss with"), "{out}{err}");
    println!("{out}");
    std::fs::remove_dir_all(&dir).ok();
}
