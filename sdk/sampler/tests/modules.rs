//! Checks the built-in sampler modules (built by the host's build script, or by
//! `cargo build --release --target wasm32-unknown-unknown --manifest-path
//! samplers/builtin/Cargo.toml`) against the ABI: valid wasm, exactly the exports it
//! requires with their signatures, only allowed imports, a 32-bit memory, size limits.
//! Skipped (with a message) when the modules have not been built, unless
//! `KILN_REQUIRE_SAMPLERS=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType, Validator};

/// A function signature as text, e.g. "(i32, i64) -> i32".
fn sig(params: &[ValType], results: &[ValType]) -> String {
    let list = |v: &[ValType]| {
        v.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

struct Module {
    imports: BTreeMap<String, String>,
    exports: BTreeMap<String, String>,
    memory_pages: u64,
    memory64: bool,
    size: usize,
}

fn inspect(bytes: &[u8]) -> Module {
    Validator::new().validate_all(bytes).expect("valid wasm");
    let mut types = Vec::new();
    let mut funcs: Vec<u32> = Vec::new(); // type of each function (imports first)
    let mut m = Module {
        imports: BTreeMap::new(),
        exports: BTreeMap::new(),
        memory_pages: 0,
        memory64: false,
        size: bytes.len(),
    };
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.expect("parse") {
            Payload::TypeSection(r) => {
                for group in r {
                    for t in group.expect("type").into_types() {
                        let f = t.unwrap_func();
                        types.push(sig(f.params(), f.results()));
                    }
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.expect("import");
                    let name = format!("{}.{}", imp.module, imp.name);
                    let ty = match imp.ty {
                        TypeRef::Func(t) => {
                            funcs.push(t);
                            types[t as usize].clone()
                        }
                        other => format!("{other:?}"),
                    };
                    m.imports.insert(name, ty);
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    funcs.push(t.expect("function"));
                }
            }
            Payload::MemorySection(r) => {
                for mem in r {
                    let mem = mem.expect("memory");
                    m.memory_pages = mem.initial;
                    m.memory64 = mem.memory64;
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.expect("export");
                    exports.push((e.name.to_string(), e.kind, e.index));
                }
            }
            _ => {}
        }
    }
    for (name, kind, index) in exports {
        let ty = match kind {
            ExternalKind::Func => types[funcs[index as usize] as usize].clone(),
            other => format!("{other:?}"),
        };
        m.exports.insert(name, ty);
    }
    m
}

#[test]
fn builtin_modules_follow_the_abi() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../samplers/builtin/target/wasm32-unknown-unknown/release");
    let required: BTreeMap<&str, &str> = [
        ("memory", "Memory"),
        ("kiln_abi_version", "() -> (i32)"),
        ("kiln_alloc", "(i32) -> (i32)"),
        ("kiln_init", "(i32, i32, i64, i32) -> (i32)"),
        ("kiln_sample", "(i32, i32, f32) -> (i32)"),
        ("kiln_accept", "(i32) -> ()"),
        ("kiln_reset", "() -> ()"),
    ]
    .into_iter()
    .collect();
    let allowed_imports: BTreeMap<&str, &str> = [
        ("kiln.n_vocab", "() -> (i32)"),
        ("kiln.token_bytes", "(i32, i32, i32) -> (i32)"),
        ("kiln.special_token", "(i32) -> (i32)"),
        ("kiln.is_eog", "(i32) -> (i32)"),
        ("kiln.seq_len", "() -> (i32)"),
        ("kiln.seq_tokens", "(i32, i32, i32) -> (i32)"),
        ("kiln.set_error", "(i32, i32) -> ()"),
    ]
    .into_iter()
    .collect();
    for policy in ["greedy", "chain", "mirostat", "constraint"] {
        let path = dir.join(format!("kiln_sampler_{policy}.wasm"));
        let Ok(bytes) = std::fs::read(&path) else {
            if std::env::var("KILN_REQUIRE_SAMPLERS").as_deref() == Ok("1") {
                panic!("{} is missing", path.display());
            }
            println!("skipped: {} not built", path.display());
            continue;
        };
        let m = inspect(&bytes);
        println!("{policy}: {} bytes, imports {:?}", m.size, m.imports.keys());
        assert!(m.size <= 16 << 20, "{policy}: module too large");
        assert!(!m.memory64 && m.memory_pages <= 1024, "{policy}: memory");
        for (name, ty) in &required {
            assert_eq!(
                m.exports.get(*name).map(String::as_str),
                Some(*ty),
                "{policy}: export {name}"
            );
        }
        let has_mask = m.exports.get("kiln_mask").map(String::as_str);
        if policy == "constraint" {
            assert_eq!(has_mask, Some("() -> (i32)"), "{policy}: kiln_mask");
        } else {
            assert_eq!(has_mask, None, "{policy}: kiln_mask");
        }
        for (name, ty) in &m.imports {
            assert_eq!(
                allowed_imports.get(name.as_str()),
                Some(&ty.as_str()),
                "{policy}: import {name}"
            );
        }
        // Every other export is one of the linker's globals.
        for name in m.exports.keys() {
            assert!(
                required.contains_key(name.as_str())
                    || name == "kiln_mask"
                    || name == "__data_end"
                    || name == "__heap_base",
                "{policy}: unexpected export {name}"
            );
        }
    }
}
