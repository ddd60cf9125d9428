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
];

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
