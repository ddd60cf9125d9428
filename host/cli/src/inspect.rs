//! `kiln inspect`: a GGUF file's metadata and tensor table.

use anyhow::Result;
use kiln_runtime::model_file::ModelFile;
use kiln_sdk::gguf::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn show(v: &Value<'_>, all: bool) -> String {
    match v {
        Value::String(s) => {
            let s = String::from_utf8_lossy(s);
            let s = s.replace('\n', "\\n");
            if !all && s.chars().count() > 120 {
                format!(
                    "{:?}… ({} chars)",
                    s.chars().take(120).collect::<String>(),
                    s.chars().count()
                )
            } else {
                format!("{s:?}")
            }
        }
        Value::Array(a) => {
            let n = if all { a.len() } else { a.len().min(8) };
            let items: Vec<String> = a.iter().take(n).map(|x| show(&x, all)).collect();
            let more = if n < a.len() {
                format!(", … ({} items)", a.len())
            } else {
                String::new()
            };
            format!("[{}{}]", items.join(", "), more)
        }
        Value::Bool(b) => b.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        other => other
            .as_i64()
            .map(|i| i.to_string())
            .or_else(|| other.as_u64().map(|u| u.to_string()))
            .unwrap_or_default(),
    }
}

/// Prints metadata and tensors of the model at `path`.
pub fn inspect(path: &Path, all: bool) -> Result<()> {
    let f = ModelFile::open(path)?;
    let g = f.gguf();
    println!(
        "{}: GGUF v{}, {:.1} MB, {} metadata keys, {} tensors",
        path.display(),
        g.version,
        f.size() as f64 / 1e6,
        g.metadata.len(),
        g.tensors.len()
    );
    println!("\nmetadata:");
    for m in &g.metadata {
        println!(
            "  {:<44} {:<7} {}",
            m.key,
            format!("{:?}", m.value_type).to_lowercase(),
            show(&m.value, all)
        );
    }
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &g.tensors {
        let e = by_type.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.data.len() as u64;
    }
    let params: u64 = g.tensors.iter().map(|t| t.n_elements()).sum();
    println!(
        "\ntensors: {} ({:.1} M parameters)",
        g.tensors.len(),
        params as f64 / 1e6
    );
    for (ty, (n, bytes)) in &by_type {
        println!("  {ty:<6} x{n:<4} {:>9.1} MB", *bytes as f64 / 1e6);
    }
    let shown = if all {
        g.tensors.len()
    } else {
        g.tensors.len().min(40)
    };
    println!(
        "\n  {:<36} {:<6} {:<22} {:>12}",
        "NAME", "TYPE", "SHAPE", "BYTES"
    );
    for t in g.tensors.iter().take(shown) {
        println!(
            "  {:<36} {:<6} {:<22} {:>12}",
            t.name,
            t.ty.name(),
            format!("{:?}", t.dims),
            t.data.len()
        );
    }
    if shown < g.tensors.len() {
        println!("  … {} more (use --all)", g.tensors.len() - shown);
    }
    Ok(())
}
