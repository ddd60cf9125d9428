//! `kiln perplexity` against llama.cpp's `llama-perplexity` on the same public-domain text
//! (`tests/data/perplexity/shakespeare.txt`) with the same settings: for each catalog model at
//! a context of 512 (8 chunks) and 4096 (1 chunk), Kiln's perplexity is within 0.5% of
//! llama.cpp's (`tests/data/perplexity/llama_cpp.json`, measured with llama.cpp 0c1e57098).

use kiln_e2e::*;
use sha2::{Digest, Sha256};

/// Largest accepted relative difference from llama.cpp's perplexity.
const MAX_REL: f64 = 0.005;

#[test]
fn perplexity_matches_llama_cpp_within_half_a_percent() {
    let dir = workspace().join("tests/data/perplexity");
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("llama_cpp.json")).unwrap())
            .unwrap();
    let text = dir.join("shakespeare.txt");
    let bytes = std::fs::read(&text).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        refs["text"]["sha256"].as_str().unwrap(),
        "the text changed"
    );
    let mut failures = Vec::new();
    let mut ran = 0;
    for run in refs["runs"].as_array().unwrap() {
        let file = run["model"].as_str().unwrap();
        let Some(path) = model(file) else { continue };
        let n_ctx = run["n_ctx"].as_u64().unwrap().to_string();
        let chunks = run["chunks"].as_u64().unwrap().to_string();
        let o = kiln(
            &[
                "perplexity",
                "-m",
                path.to_str().unwrap(),
                "-f",
                text.to_str().unwrap(),
                "--ctx",
                &n_ctx,
                "--chunks",
                &chunks,
                "-t",
                "2",
                "--json",
            ],
            &[],
        );
        let (out, err) = texts(&o);
        assert!(o.status.success(), "{file} at {n_ctx}: {err}");
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let (ppl, want) = (got["ppl"].as_f64().unwrap(), run["ppl"].as_f64().unwrap());
        let rel = (ppl - want) / want;
        let (err_got, err_want) = (
            got["ppl_error"].as_f64().unwrap(),
            run["ppl_error"].as_f64().unwrap(),
        );
        println!(
            "{file} ctx {n_ctx} x{chunks}: kiln {ppl:.4} ± {err_got:.4}, llama.cpp {want:.4} ± {err_want:.4} ({:+.2}%), {:.1} s",
            100.0 * rel,
            got["seconds"].as_f64().unwrap_or(0.0)
        );
        assert_eq!(
            got["scored"].as_u64().unwrap(),
            run["chunks"].as_u64().unwrap() * (run["n_ctx"].as_u64().unwrap() / 2 - 1)
        );
        if rel.abs() > MAX_REL || (err_got / err_want - 1.0).abs() > 0.05 {
            failures.push(format!(
                "{file} ctx {n_ctx}: {ppl:.4} ± {err_got:.4} vs {want:.4} ± {err_want:.4}"
            ));
        }
        ran += 1;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    if models_required() {
        assert_eq!(ran, 8);
    }
}
