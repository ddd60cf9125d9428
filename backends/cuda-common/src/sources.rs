//! The kernel sources of the repository's `kernels/` folder, embedded at build time.

/// Shared helpers, first in every program.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");
/// Weight formats (block layouts and dequantization).
pub const QUANT: &str = include_str!("../../../kernels/quant.cuh");

/// Every `.cu` file, by name.
pub const FILES: &[(&str, &str)] = &[
    ("matvec.cu", include_str!("../../../kernels/matvec.cu")),
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    ("outputs.cu", include_str!("../../../kernels/outputs.cu")),
    ("mmq.cu", include_str!("../../../kernels/mmq.cu")),
];

/// One NVRTC compilation unit of the kernels: compiled (and cached) on its own, so the units
/// of a program compile in parallel ([`crate::nvrtc::compile_units_cached`]).
pub struct Unit {
    /// Name (the cache file's prefix).
    pub name: String,
    /// Source text: the part it keeps (`KILN_PART`), the helpers, then its files.
    pub src: String,
}

/// The kernels as compilation units: the small files together, and the matrix kernels cut
/// into the parts their files mark (`KILN_IN(k)`), as their instantiations take most of the
/// compile time. Together they hold every kernel of [`program`], each once.
pub fn units() -> Vec<Unit> {
    let file = |n: &str| FILES.iter().find(|(f, _)| *f == n).map_or("", |(_, b)| *b);
    let unit = |name: String, part: Option<usize>, files: &[&str]| {
        let mut src = part.map_or(String::new(), |p| format!("#define KILN_PART {p}\n"));
        for (n, body) in [("common.cuh", COMMON), ("quant.cuh", QUANT)]
            .into_iter()
            .chain(files.iter().map(|f| (*f, file(f))))
        {
            src.push_str(&format!("// ---- {n}\n{body}\n"));
        }
        Unit { name, src }
    };
    let mut out = vec![unit(
        "kiln-misc".into(),
        None,
        &["elementwise.cu", "attention.cu", "outputs.cu"],
    )];
    for p in 0..5 {
        out.push(unit(format!("kiln-matvec{p}"), Some(p), &["matvec.cu"]));
    }
    for p in 0..3 {
        out.push(unit(format!("kiln-mmq{p}"), Some(p), &["mmq.cu"]));
    }
    out
}

/// The lines of a unit's source that its part keeps (`#if KILN_IN(k)` blocks of other parts
/// dropped; every line of a source without `KILN_PART`).
pub fn kept(src: &str) -> String {
    let part = src
        .strip_prefix("#define KILN_PART ")
        .and_then(|r| r.lines().next())
        .and_then(|p| p.parse::<usize>().ok());
    let mut out = String::new();
    let mut keep = true;
    for line in src.lines() {
        if let Some(k) = line
            .strip_prefix("#if KILN_IN(")
            .and_then(|r| r.strip_suffix(')'))
        {
            keep = part.is_none_or(|p| k.parse::<usize>().ok() == Some(p));
        } else if line == "#endif" {
            keep = true;
        } else if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One program holding the helpers and every kernel file.
pub fn program() -> String {
    let mut s = String::new();
    for (name, body) in [("common.cuh", COMMON), ("quant.cuh", QUANT)]
        .into_iter()
        .chain(FILES.iter().copied())
    {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(body);
        s.push('\n');
    }
    s
}

/// The names of the `extern "C"` kernels in `src` (`extern "C" __global__ ... name(`), skipping
/// `__launch_bounds__(...)` and macro templates (names pasted with `##`).
pub fn kernel_names(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + 10..];
        let mut head = String::new();
        let mut tail = rest;
        while let Some(paren) = tail.find('(') {
            head.push_str(&tail[..paren]);
            if !head.trim_end().ends_with("__launch_bounds__") {
                break;
            }
            let Some(close) = tail[paren..].find(')') else {
                break;
            };
            tail = &tail[paren + close + 1..];
            head.push(' ');
        }
        if head.contains("__global__") && !head.contains("##") {
            if let Some(name) = head.split_whitespace().last() {
                out.push(name.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels and the instantiation macro lines of a text, sorted.
    fn defined(src: &str) -> Vec<String> {
        let mut v = kernel_names(src);
        v.extend(
            src.lines()
                .filter(|l| l.starts_with("MMV_") || l.starts_with("MMQ_"))
                .map(str::to_string),
        );
        v.sort();
        v
    }

    #[test]
    fn units_hold_every_kernel_once() {
        let mut parts: Vec<String> = units()
            .iter()
            .flat_map(|u| defined(&kept(&u.src)))
            .collect();
        parts.sort();
        assert_eq!(parts, defined(&program()));
        assert!(parts.iter().any(|l| l.starts_with("MMQ_INST(q6_k")));
    }

    #[test]
    fn finds_kernel_names() {
        let src = "extern \"C\" __global__ void a(int x) {}\n\
                   extern \"C\" __global__ void __launch_bounds__(128)\nb(int y) {}\n\
                   #define M(N) extern \"C\" __global__ void k_##N(int z) {}\n";
        assert_eq!(kernel_names(src), vec!["a".to_string(), "b".to_string()]);
        let all = kernel_names(&program());
        for k in [
            "rms_norm",
            "rms_norm_row",
            "attn_split",
            "stats_part",
            "stats_final",
            "stats_cands",
            "moe_route",
        ] {
            assert!(all.iter().any(|n| n == k), "{k} missing from {all:?}");
        }
    }
}
