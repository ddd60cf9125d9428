//! WASM samplers end to end: the "ban" example, written in Rust, C, Zig, AssemblyScript and WAT
//! (samplers/examples, built by `scripts/build-sampler-examples`), chooses every token of
//! `kiln run --sampler` on SmolLM2. All five implement one policy, so they must agree exactly.

use kiln_e2e::*;
use std::path::PathBuf;

const SMOL: &str = "smollm2-135m-instruct-q4_1.gguf";
const PROMPT: &str = "The capital of France is";
const LANGS: [&str; 5] = ["rust", "c", "zig", "assemblyscript", "wat"];
/// SmolLM2's token " Paris", the greedy continuation of [`PROMPT`].
const PARIS: u32 = 7042;
/// SmolLM2's token " the".
const THE: u32 = 260;

/// The built module of one language, or `None` (after printing why) when it was not built.
fn module(lang: &str) -> Option<PathBuf> {
    let p = workspace().join(format!("samplers/examples/out/{lang}-ban.wasm"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        !models_required(),
        "{} is missing and KILN_REQUIRE_MODELS=1: run scripts/build-sampler-examples",
        p.display()
    );
    eprintln!(
        "skipped: {} is not built (scripts/build-sampler-examples)",
        p.display()
    );
    None
}

/// Every built module, with its language.
fn modules() -> Vec<(&'static str, PathBuf)> {
    LANGS
        .iter()
        .filter_map(|&l| module(l).map(|p| (l, p)))
        .collect()
}

/// `kiln run` on `model` with `args` appended; returns stdout, asserting success.
fn generate(model: &str, prompt: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "-m", model, "-p", prompt, "-t", "1"];
    all.extend_from_slice(args);
    let o = kiln(&all, &[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "kiln {all:?} failed: {err}");
    // `kiln run` ends the generated text with one newline of its own.
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

/// The token ids of `text` (`kiln tokenize`).
fn tokenize(model: &str, text: &str) -> Vec<u32> {
    let o = kiln(&["tokenize", "-m", model, "--no-special", text], &[]);
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    serde_json::from_str(out.trim()).expect("tokenize prints a JSON array of ids")
}

#[test]
fn every_language_bans_paris_the_same_way() {
    let Some(model) = model(SMOL) else { return };
    let model = model.to_str().unwrap();
    let greedy = generate(model, PROMPT, &["-n", "8", "--temperature", "0"]);
    assert!(greedy.starts_with(" Paris"), "greedy reference: {greedy:?}");
    assert_eq!(tokenize(model, " Paris"), [PARIS]);
    let mut banned: Vec<(&str, String)> = Vec::new();
    for (lang, wasm) in modules() {
        let wasm = wasm.to_str().unwrap();
        // Nothing banned: the module is plain greedy.
        let free = generate(
            model,
            PROMPT,
            &["-n", "8", "--sampler", wasm, "--sampler-config", "{}"],
        );
        assert_eq!(
            free, greedy,
            "{lang}: with nothing banned the sampler must be greedy"
        );
        let out = generate(
            model,
            PROMPT,
            &[
                "-n",
                "8",
                "--sampler",
                wasm,
                "--sampler-config",
                r#"{"ban":[7042]}"#,
            ],
        );
        assert!(
            !out.starts_with(" Paris"),
            "{lang}: banned \" Paris\" was chosen: {out:?}"
        );
        assert!(!out.is_empty(), "{lang}: no text");
        banned.push((lang, out));
    }
    for (lang, out) in banned.iter().skip(1) {
        assert_eq!(out, &banned[0].1, "{lang} and {} disagree", banned[0].0);
    }
}

#[test]
fn a_banned_token_is_never_emitted() {
    let Some(model) = model(SMOL) else { return };
    let model = model.to_str().unwrap();
    let prompt = "Once upon a time";
    let args = ["-n", "32", "--ignore-eos"];
    // The reference makes the test meaningful: greedy says " the" within 32 tokens.
    let greedy = generate(
        model,
        prompt,
        &[&args[..], &["--temperature", "0"]].concat(),
    );
    assert!(
        tokenize(model, &greedy).contains(&THE),
        "greedy never says \" the\": {greedy:?}"
    );
    let config = format!(r#"{{"ban": [{THE}]}}"#);
    for (lang, wasm) in modules() {
        let out = generate(
            model,
            prompt,
            &[
                &args[..],
                &[
                    "--sampler",
                    wasm.to_str().unwrap(),
                    "--sampler-config",
                    &config,
                ],
            ]
            .concat(),
        );
        let ids = tokenize(model, &out);
        assert!(ids.len() >= 16, "{lang}: too little text: {out:?}");
        assert!(
            !ids.contains(&THE),
            "{lang}: banned \" the\" in {out:?} ({ids:?})"
        );
    }
}

#[test]
fn a_bad_config_is_a_clean_error_naming_the_sampler() {
    let Some(model) = model(SMOL) else { return };
    let model = model.to_str().unwrap();
    let cases = [
        ("not json", "ban: config must be"),
        (r#"{"ban": "7042"}"#, "ban: config must be"),
        (r#"{"ban": [1, 2,]}"#, "ban: config must be"),
        (
            r#"{"ban": [99999999999999999999]}"#,
            "ban: token id out of range",
        ),
    ];
    for (lang, wasm) in modules() {
        for (config, want) in cases {
            let o = kiln(
                &[
                    "run",
                    "-m",
                    model,
                    "-p",
                    PROMPT,
                    "-n",
                    "4",
                    "--sampler",
                    wasm.to_str().unwrap(),
                    "--sampler-config",
                    config,
                ],
                &[],
            );
            let (out, err) = texts(&o);
            let what = format!("{lang} with {config:?}");
            assert_eq!(o.status.code(), Some(1), "{what}: {err}");
            assert!(err.starts_with("error: "), "{what}: {err}");
            assert!(
                err.contains(&format!("{lang}-ban")),
                "{what}: the error does not name the sampler: {err}"
            );
            assert!(
                err.contains(want),
                "{what}: the module's message is lost: {err}"
            );
            assert!(!err.contains("panicked"), "{what}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
            assert!(out.trim().is_empty(), "{what}: generated {out:?}");
        }
    }
}

#[test]
fn wat_source_runs_as_is() {
    let Some(model) = model(SMOL) else { return };
    let Some(wasm) = module("wat") else { return };
    let model = model.to_str().unwrap();
    let wat = workspace().join("samplers/examples/wat-ban/ban.wat");
    let config = ["--sampler-config", r#"{"ban":[7042]}"#];
    let from_text = generate(
        model,
        PROMPT,
        &[
            &["-n", "8", "--sampler", wat.to_str().unwrap()],
            &config[..],
        ]
        .concat(),
    );
    let from_binary = generate(
        model,
        PROMPT,
        &[
            &["-n", "8", "--sampler", wasm.to_str().unwrap()],
            &config[..],
        ]
        .concat(),
    );
    assert_eq!(from_text, from_binary);
}
