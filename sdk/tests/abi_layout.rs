//! The C header matches the Rust ABI definitions: the committed header is the generated one, and
//! a C compiler sees the same sizes and field offsets as Rust.

use kiln_sdk::abi::layout::{c_header, field_name, STRUCTS};
use kiln_sdk::abi::*;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;

macro_rules! rust_layout {
    ($($s:ident { $($f:ident),* $(,)? })*) => {
        vec![$((stringify!($s), size_of::<$s>(), vec![$((stringify!($f), offset_of!($s, $f))),*])),*]
    };
}

/// (struct name, size, [(field, offset)]) as Rust lays them out.
type Layout = Vec<(&'static str, usize, Vec<(&'static str, usize)>)>;

fn rust() -> Layout {
    rust_layout! {
        KilnError { code, message }
        KilnStr { ptr, len }
        KilnBackendInfo { struct_size, name, version, description, n_devices }
        KilnDeviceInfo { struct_size, name, kind, total_memory, free_memory }
        KilnScore { struct_size, score, reason }
        KilnBackendOptions { struct_size, n_threads, device }
        KilnMetaKv { key, value_type, raw }
        KilnTensorDesc { name, ggml_type, n_dims, dims, data, n_bytes }
        KilnGgufView { struct_size, version, alignment, n_kv, kv, n_tensors, tensors }
        KilnModelParams { struct_size, flags }
        KilnModelInfo { struct_size, n_vocab, n_ctx_train, n_layer, n_embd, weight_bytes,
            kv_bytes_per_token, arch }
        KilnContextParams { struct_size, n_ctx, n_seq_max, kv_type, n_batch_max, n_outputs_max }
        KilnContextInfo { struct_size, n_ctx, n_seq_max, n_batch_max, n_outputs_max, kv_bytes,
            scratch_bytes }
        KilnBatch { struct_size, n_tokens, tokens, positions, seq_ids }
        KilnRowOutput { row, kind, top_n, n_banned, banned, n_allowed, allowed, logits, top_ids,
            top_logits, lse, target, target_logit }
        KilnOutputs { struct_size, n_rows, row_size, rows }
        KilnOpStat { name, calls, nanos }
        KilnProfile { struct_size, n_forward, n_ops, ops }
        KilnBackendApi { struct_size, get_info, get_device, get_score, supports_type, backend_create,
            backend_destroy, model_load, model_info, model_free, context_create, context_info,
            context_free, seq_clear, seq_truncate, seq_copy, forward, score_model, get_proc_address }
        KilnBackendHeader { magic, abi_major, abi_minor, header_size, api_size, layout_fingerprint,
            sdk_version, api }
    }
}

fn header_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/kiln_backend.h")
}

#[test]
fn committed_header_is_generated_header() {
    let want = c_header();
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(header_path(), &want).unwrap();
    }
    let got = std::fs::read_to_string(header_path()).expect("sdk/include/kiln_backend.h exists");
    assert!(got == want, "sdk/include/kiln_backend.h is stale: regenerate with KILN_BLESS=1 cargo test -p kiln-sdk --test abi_layout");
}

#[test]
fn rust_fields_follow_the_declared_layout() {
    let r = rust();
    assert_eq!(r.len(), STRUCTS.len());
    for ((name, _, fields), s) in r.iter().zip(STRUCTS) {
        assert_eq!(*name, s.name);
        let declared: Vec<&str> = s.fields.iter().map(|d| field_name(d.decl)).collect();
        let rust: Vec<&str> = fields.iter().map(|f| f.0).collect();
        assert_eq!(rust, declared, "field order of {name}");
    }
}

#[test]
fn c_compiler_agrees_on_sizes_and_offsets() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if std::process::Command::new(&cc)
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no C compiler ({cc})");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"kiln_backend.h\"\nint main(void){\n",
    );
    for s in STRUCTS {
        src.push_str(&format!("printf(\"{0} %zu\\n\", sizeof({0}));\n", s.name));
        for f in s.fields {
            let f = field_name(f.decl);
            src.push_str(&format!(
                "printf(\"{0}.{1} %zu\\n\", offsetof({0}, {1}));\n",
                s.name, f
            ));
        }
    }
    src.push_str("return 0;}\n");
    std::fs::write(dir.join("layout.c"), src).unwrap();
    let exe = dir.join("layout");
    let inc = header_path().parent().unwrap().to_path_buf();
    let st = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(&inc)
        .arg(dir.join("layout.c"))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success(), "the C header does not compile");
    let out = String::from_utf8(std::process::Command::new(&exe).output().unwrap().stdout).unwrap();
    let mut want = String::new();
    for (name, size, fields) in rust() {
        want.push_str(&format!("{name} {size}\n"));
        for (f, off) in fields {
            want.push_str(&format!("{name}.{f} {off}\n"));
        }
    }
    assert_eq!(out, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fingerprint_is_in_the_header() {
    assert!(c_header().contains(&format!("0x{:016x}ull", layout::FINGERPRINT)));
}

#[test]
fn the_header_of_each_minor_compiles_and_keeps_its_fingerprint() {
    // Minor 0's header declares exactly the base layout: no appended function.
    let h0 = layout::c_header_at(0);
    assert!(!h0.contains("score_model") && !h0.contains("KilnProfile"));
    assert!(h0.contains(&format!("0x{:016x}ull", layout::fingerprint_at(0))));
    assert!(h0.contains("#define KILN_ABI_MINOR 0"));
    let h1 = layout::c_header_at(1);
    assert!(h1.contains("score_model") && h1.contains("/* since 2.1 */"));
    assert_eq!(h1, c_header());
}

/// The kept header of ABI 2.0 (`tests/fixtures/abi-2.0/kiln_backend.h`), which the fixture
/// backend of the previous minor is compiled against, is what minor 0 was: it is never
/// regenerated, so a change to the base layout shows up here.
#[test]
fn the_kept_abi_2_0_header_is_minor_0() {
    let kept =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/abi-2.0/kiln_backend.h");
    if std::env::var_os("KILN_BLESS_2_0").is_some() {
        std::fs::write(&kept, layout::c_header_at(0)).unwrap();
    }
    let got = std::fs::read_to_string(&kept).expect("the kept ABI 2.0 header exists");
    assert_eq!(got, layout::c_header_at(0));
    assert!(got.contains(&format!(
        "0x{:016x}ull",
        kiln_sdk::abi::client::known_fingerprint(0).unwrap()
    )));
}
