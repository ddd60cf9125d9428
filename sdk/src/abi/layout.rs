//! The ABI layout written once as C declarations: the source of the C header
//! (`sdk/include/kiln_backend.h`) and of the layout fingerprint checked at load time.

use super::types::{ABI_MAJOR, ABI_MINOR, ERROR_MESSAGE_LEN};

/// One C struct of the ABI: its name and its field declarations, in order.
pub struct CStruct {
    /// Type name (also the typedef).
    pub name: &'static str,
    /// Field declarations exactly as written in the header (without `;`).
    pub fields: &'static [&'static str],
}

/// Every struct of ABI 1.0, in header order.
pub const STRUCTS: &[CStruct] = &[
    CStruct { name: "KilnError", fields: &["int32_t code", "char message[1020]"] },
    CStruct { name: "KilnStr", fields: &["const uint8_t *ptr", "uint64_t len"] },
    CStruct {
        name: "KilnBackendInfo",
        fields: &["char name[64]", "char version[64]", "char description[256]", "uint32_t n_devices"],
    },
    CStruct {
        name: "KilnDeviceInfo",
        fields: &["char name[128]", "uint32_t kind", "uint64_t total_memory", "uint64_t free_memory"],
    },
    CStruct { name: "KilnScore", fields: &["uint32_t score", "char reason[256]"] },
    CStruct {
        name: "KilnBackendOptions",
        fields: &["uint32_t struct_size", "uint32_t n_threads", "uint32_t device"],
    },
    CStruct { name: "KilnMetaKv", fields: &["KilnStr key", "uint32_t value_type", "KilnStr raw"] },
    CStruct {
        name: "KilnTensorDesc",
        fields: &[
            "KilnStr name",
            "uint32_t ggml_type",
            "uint32_t n_dims",
            "uint64_t dims[4]",
            "const uint8_t *data",
            "uint64_t n_bytes",
        ],
    },
    CStruct {
        name: "KilnGgufView",
        fields: &[
            "uint32_t struct_size",
            "uint32_t version",
            "uint64_t alignment",
            "uint64_t n_kv",
            "const KilnMetaKv *kv",
            "uint64_t n_tensors",
            "const KilnTensorDesc *tensors",
        ],
    },
    CStruct { name: "KilnModelParams", fields: &["uint32_t struct_size", "uint32_t flags"] },
    CStruct {
        name: "KilnModelInfo",
        fields: &[
            "uint32_t n_vocab",
            "uint32_t n_ctx_train",
            "uint32_t n_layer",
            "uint32_t n_embd",
            "uint64_t weight_bytes",
            "uint64_t kv_bytes_per_token",
            "char arch[32]",
        ],
    },
    CStruct {
        name: "KilnContextParams",
        fields: &["uint32_t struct_size", "uint32_t n_ctx", "uint32_t n_seq_max", "uint32_t kv_type"],
    },
    CStruct {
        name: "KilnContextInfo",
        fields: &["uint32_t n_ctx", "uint32_t n_seq_max", "uint64_t kv_bytes"],
    },
    CStruct {
        name: "KilnBatch",
        fields: &[
            "uint32_t n_tokens",
            "const int32_t *tokens",
            "const int32_t *positions",
            "const int32_t *seq_ids",
            "const uint8_t *want_output",
        ],
    },
    CStruct {
        name: "KilnOutputs",
        fields: &[
            "uint32_t mode",
            "uint32_t n_outputs",
            "float *logits",
            "uint32_t top_n",
            "int32_t *top_ids",
            "float *top_logits",
            "float *lse",
        ],
    },
    CStruct {
        name: "KilnBackendApi",
        fields: &[
            "uint32_t struct_size",
            "int32_t (*get_info)(KilnBackendInfo *out, KilnError *err)",
            "int32_t (*get_device)(uint32_t index, KilnDeviceInfo *out, KilnError *err)",
            "int32_t (*get_score)(KilnScore *out, KilnError *err)",
            "int32_t (*supports_type)(uint32_t ggml_type, uint8_t *out, KilnError *err)",
            "int32_t (*backend_create)(const KilnBackendOptions *opts, KilnBackend **out, KilnError *err)",
            "void (*backend_destroy)(KilnBackend *backend)",
            "int32_t (*model_load)(KilnBackend *backend, const KilnGgufView *view, const KilnModelParams *params, KilnModel **out, KilnError *err)",
            "int32_t (*model_info)(const KilnModel *model, KilnModelInfo *out, KilnError *err)",
            "void (*model_free)(KilnModel *model)",
            "int32_t (*context_create)(const KilnModel *model, const KilnContextParams *params, KilnContext **out, KilnError *err)",
            "int32_t (*context_info)(const KilnContext *ctx, KilnContextInfo *out, KilnError *err)",
            "void (*context_free)(KilnContext *ctx)",
            "int32_t (*seq_clear)(KilnContext *ctx, int32_t seq, KilnError *err)",
            "int32_t (*seq_truncate)(KilnContext *ctx, int32_t seq, uint32_t n_keep, KilnError *err)",
            "int32_t (*seq_copy)(KilnContext *ctx, int32_t src, int32_t dst, uint32_t n, KilnError *err)",
            "int32_t (*forward)(KilnContext *ctx, const KilnBatch *batch, const KilnOutputs *out, KilnError *err)",
        ],
    },
    CStruct {
        name: "KilnBackendHeader",
        fields: &[
            "uint32_t magic",
            "uint16_t abi_major",
            "uint16_t abi_minor",
            "uint32_t header_size",
            "uint32_t api_size",
            "uint64_t layout_fingerprint",
            "const char *sdk_version",
            "const KilnBackendApi *api",
        ],
    },
];

/// The field name inside a declaration (`"char name[64]"` → `name`, `"int32_t (*f)(..)"` → `f`).
pub fn field_name(decl: &str) -> &str {
    if let Some(start) = decl.find("(*") {
        let rest = &decl[start + 2..];
        return &rest[..rest.find(')').unwrap_or(rest.len())];
    }
    let head = decl.split('[').next().unwrap_or(decl);
    head.rsplit([' ', '*']).next().unwrap_or(head)
}

const fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

const fn fingerprint(structs: &[CStruct]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    h = fnv1a(h, &(ABI_MAJOR as u32).to_le_bytes());
    let mut s = 0;
    while s < structs.len() {
        h = fnv1a(h, structs[s].name.as_bytes());
        h = fnv1a(h, b"{");
        let mut f = 0;
        while f < structs[s].fields.len() {
            h = fnv1a(h, structs[s].fields[f].as_bytes());
            h = fnv1a(h, b";");
            f += 1;
        }
        h = fnv1a(h, b"}");
        s += 1;
    }
    h
}

/// Fingerprint of the layout above: a library whose header carries another value for the same
/// (major, minor) was built against a different layout and is refused.
pub const FINGERPRINT: u64 = fingerprint(STRUCTS);

const _: () = assert!(ERROR_MESSAGE_LEN == 1020);

/// The C header text for this layout (committed as `sdk/include/kiln_backend.h`; a test keeps
/// the two identical).
pub fn c_header() -> String {
    let mut h = String::new();
    h.push_str("/* kiln_backend.h: Kiln backend ABI. Generated from kiln-sdk's abi/layout.rs;\n");
    h.push_str(" * do not edit by hand (a test checks this file against the Rust definitions).\n");
    h.push_str(" *\n * A backend library exports one symbol, `kiln_backend_header`, a static\n");
    h.push_str(" * KilnBackendHeader. The host checks magic, ABI version, sizes and the layout\n");
    h.push_str(" * fingerprint before calling anything. Every function returns a KilnStatus and\n");
    h.push_str(
        " * fills the host-owned KilnError on failure; nothing may unwind across the ABI. */\n",
    );
    h.push_str("#ifndef KILN_BACKEND_H\n#define KILN_BACKEND_H\n\n#include <stdint.h>\n\n");
    h.push_str("#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    h.push_str("#define KILN_ABI_MAGIC 0x4E4C494Bu /* \"KILN\" little-endian */\n");
    h.push_str(&format!(
        "#define KILN_ABI_MAJOR {ABI_MAJOR}\n#define KILN_ABI_MINOR {ABI_MINOR}\n"
    ));
    h.push_str(&format!(
        "#define KILN_ABI_FINGERPRINT 0x{FINGERPRINT:016x}ull\n"
    ));
    h.push_str("#define KILN_ENTRY_SYMBOL \"kiln_backend_header\"\n\n");
    h.push_str("typedef enum KilnStatus {\n    KILN_OK = 0,\n    KILN_INVALID_ARGUMENT = 1,\n");
    h.push_str(
        "    KILN_UNSUPPORTED = 2,\n    KILN_OUT_OF_MEMORY = 3,\n    KILN_CONTEXT_FULL = 4,\n",
    );
    h.push_str("    KILN_INTERNAL = 5,\n    KILN_PANIC = 6\n} KilnStatus;\n\n");
    h.push_str("#define KILN_DEVICE_CPU 0u\n#define KILN_DEVICE_GPU 1u\n");
    h.push_str("#define KILN_OUTPUT_LOGITS 0u\n#define KILN_OUTPUT_TOP_N 1u\n\n");
    h.push_str("typedef struct KilnBackend KilnBackend;\ntypedef struct KilnModel KilnModel;\n");
    h.push_str("typedef struct KilnContext KilnContext;\n\n");
    for s in STRUCTS {
        h.push_str(&format!("typedef struct {} {{\n", s.name));
        for f in s.fields {
            h.push_str(&format!("    {f};\n"));
        }
        h.push_str(&format!("}} {};\n\n", s.name));
    }
    h.push_str("#ifdef __cplusplus\n}\n#endif\n\n#endif /* KILN_BACKEND_H */\n");
    h
}
