//! The ABI layout written once as C declarations: the source of the C header
//! (`sdk/include/kiln_backend.h`) and of the layout fingerprint checked at load time.

use super::types::{ABI_MAJOR, ABI_MINOR, ERROR_MESSAGE_LEN};

/// One field (or function pointer) of a C struct: its declaration exactly as written in the
/// header (without `;`) and the minor version of the current major that added it.
pub struct CField {
    /// The declaration.
    pub decl: &'static str,
    /// The minor version that appended it (0 = part of the major's base layout).
    pub since: u16,
}

/// A field of the major's base layout.
const fn f(decl: &'static str) -> CField {
    CField { decl, since: 0 }
}

/// A field appended in minor `since`.
const fn since(since: u16, decl: &'static str) -> CField {
    CField { decl, since }
}

/// One C struct of the ABI: its name and its fields, in order.
pub struct CStruct {
    /// Type name (also the typedef).
    pub name: &'static str,
    /// The minor version that added the struct (0 = part of the major's base layout).
    pub since: u16,
    /// Fields in declaration order (later minors only append).
    pub fields: &'static [CField],
}

/// Every struct of the current ABI, in header order.
pub const STRUCTS: &[CStruct] = &[
    CStruct { since: 0, name: "KilnError", fields: &[f("int32_t code"), f("char message[1020]")] },
    CStruct { since: 0, name: "KilnStr", fields: &[f("const uint8_t *ptr"), f("uint64_t len")] },
    CStruct {
        since: 0,
        name: "KilnBackendInfo",
        fields: &[
            f("uint32_t struct_size"),
            f("char name[64]"),
            f("char version[64]"),
            f("char description[256]"),
            f("uint32_t n_devices"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnDeviceInfo",
        fields: &[
            f("uint32_t struct_size"),
            f("char name[128]"),
            f("uint32_t kind"),
            f("uint64_t total_memory"),
            f("uint64_t free_memory"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnScore",
        fields: &[f("uint32_t struct_size"), f("uint32_t score"), f("char reason[256]")],
    },
    CStruct {
        since: 0,
        name: "KilnBackendOptions",
        fields: &[f("uint32_t struct_size"), f("uint32_t n_threads"), f("uint32_t device")],
    },
    CStruct {
        since: 0,
        name: "KilnMetaKv",
        fields: &[f("KilnStr key"), f("uint32_t value_type"), f("KilnStr raw")],
    },
    CStruct {
        since: 0,
        name: "KilnTensorDesc",
        fields: &[
            f("KilnStr name"),
            f("uint32_t ggml_type"),
            f("uint32_t n_dims"),
            f("uint64_t dims[4]"),
            f("const uint8_t *data"),
            f("uint64_t n_bytes"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnGgufView",
        fields: &[
            f("uint32_t struct_size"),
            f("uint32_t version"),
            f("uint64_t alignment"),
            f("uint64_t n_kv"),
            f("const KilnMetaKv *kv"),
            f("uint64_t n_tensors"),
            f("const KilnTensorDesc *tensors"),
        ],
    },
    CStruct { since: 0, name: "KilnModelParams", fields: &[f("uint32_t struct_size"), f("uint32_t flags")] },
    CStruct {
        since: 0,
        name: "KilnModelInfo",
        fields: &[
            f("uint32_t struct_size"),
            f("uint32_t n_vocab"),
            f("uint32_t n_ctx_train"),
            f("uint32_t n_layer"),
            f("uint32_t n_embd"),
            f("uint64_t weight_bytes"),
            f("uint64_t kv_bytes_per_token"),
            f("char arch[32]"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnContextParams",
        fields: &[
            f("uint32_t struct_size"),
            f("uint32_t n_ctx"),
            f("uint32_t n_seq_max"),
            f("uint32_t kv_type"),
            f("uint32_t n_batch_max"),
            f("uint32_t n_outputs_max"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnContextInfo",
        fields: &[
            f("uint32_t struct_size"),
            f("uint32_t n_ctx"),
            f("uint32_t n_seq_max"),
            f("uint32_t n_batch_max"),
            f("uint32_t n_outputs_max"),
            f("uint64_t kv_bytes"),
            f("uint64_t scratch_bytes"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnBatch",
        fields: &[
            f("uint32_t struct_size"),
            f("uint32_t n_tokens"),
            f("const int32_t *tokens"),
            f("const int32_t *positions"),
            f("const int32_t *seq_ids"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnRowOutput",
        fields: &[
            f("uint32_t row"),
            f("uint32_t kind"),
            f("uint32_t top_n"),
            f("uint32_t n_banned"),
            f("const int32_t *banned"),
            f("uint32_t n_allowed"),
            f("const int32_t *allowed"),
            f("float *logits"),
            f("int32_t *top_ids"),
            f("float *top_logits"),
            f("float *lse"),
            f("int32_t target"),
            f("float *target_logit"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnOutputs",
        fields: &[
            f("uint32_t struct_size"),
            f("uint32_t n_rows"),
            f("uint32_t row_size"),
            f("const KilnRowOutput *rows"),
        ],
    },
    CStruct {
        since: 1,
        name: "KilnOpStat",
        fields: &[
            since(1, "char name[32]"),
            since(1, "uint64_t calls"),
            since(1, "uint64_t nanos"),
        ],
    },
    CStruct {
        since: 1,
        name: "KilnProfile",
        fields: &[
            since(1, "uint32_t struct_size"),
            since(1, "uint64_t n_forward"),
            since(1, "uint32_t n_ops"),
            since(1, "KilnOpStat ops[32]"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnBackendApi",
        fields: &[
            f("uint32_t struct_size"),
            f("int32_t (*get_info)(KilnBackendInfo *out, KilnError *err)"),
            f("int32_t (*get_device)(uint32_t index, KilnDeviceInfo *out, KilnError *err)"),
            f("int32_t (*get_score)(KilnScore *out, KilnError *err)"),
            f("int32_t (*supports_type)(uint32_t ggml_type, uint8_t *out, KilnError *err)"),
            f("int32_t (*backend_create)(const KilnBackendOptions *opts, KilnBackend **out, KilnError *err)"),
            f("void (*backend_destroy)(KilnBackend *backend)"),
            f("int32_t (*model_load)(KilnBackend *backend, const KilnGgufView *view, const KilnModelParams *params, KilnModel **out, KilnError *err)"),
            f("int32_t (*model_info)(const KilnModel *model, KilnModelInfo *out, KilnError *err)"),
            f("void (*model_free)(KilnModel *model)"),
            f("int32_t (*context_create)(const KilnModel *model, const KilnContextParams *params, KilnContext **out, KilnError *err)"),
            f("int32_t (*context_info)(const KilnContext *ctx, KilnContextInfo *out, KilnError *err)"),
            f("void (*context_free)(KilnContext *ctx)"),
            f("int32_t (*seq_clear)(KilnContext *ctx, int32_t seq, KilnError *err)"),
            f("int32_t (*seq_truncate)(KilnContext *ctx, int32_t seq, uint32_t n_keep, KilnError *err)"),
            f("int32_t (*seq_copy)(KilnContext *ctx, int32_t src, int32_t dst, uint32_t n, KilnError *err)"),
            f("int32_t (*forward)(KilnContext *ctx, const KilnBatch *batch, const KilnOutputs *outputs, KilnError *err)"),
            since(1, "int32_t (*score_model)(const KilnGgufView *view, KilnScore *out, KilnError *err)"),
            since(1, "const void *(*get_proc_address)(const char *name)"),
        ],
    },
    CStruct {
        since: 0,
        name: "KilnBackendHeader",
        fields: &[
            f("uint32_t magic"),
            f("uint16_t abi_major"),
            f("uint16_t abi_minor"),
            f("uint32_t header_size"),
            f("uint32_t api_size"),
            f("uint64_t layout_fingerprint"),
            f("const char *sdk_version"),
            f("const KilnBackendApi *api"),
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

/// The fingerprint of the layout as it was at minor `minor` of the current major: every
/// declaration that minor had, in order.
pub const fn fingerprint_at(minor: u16) -> u64 {
    let structs = STRUCTS;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    h = fnv1a(h, &(ABI_MAJOR as u32).to_le_bytes());
    let mut s = 0;
    while s < structs.len() {
        if structs[s].since > minor {
            s += 1;
            continue;
        }
        h = fnv1a(h, structs[s].name.as_bytes());
        h = fnv1a(h, b"{");
        let mut f = 0;
        while f < structs[s].fields.len() {
            if structs[s].fields[f].since <= minor {
                h = fnv1a(h, structs[s].fields[f].decl.as_bytes());
                h = fnv1a(h, b";");
            }
            f += 1;
        }
        h = fnv1a(h, b"}");
        s += 1;
    }
    h
}

/// Fingerprint of the current layout: a library whose header carries another value for the
/// same (major, minor) was built against a different layout and is refused.
pub const FINGERPRINT: u64 = fingerprint_at(ABI_MINOR);

const _: () = assert!(ERROR_MESSAGE_LEN == 1020);

/// The C header text for this layout (committed as `sdk/include/kiln_backend.h`; a test keeps
/// the two identical).
pub fn c_header() -> String {
    c_header_at(ABI_MINOR)
}

/// The C header of minor `minor` of the current major: the declarations it had (what a
/// backend built for that minor was compiled against).
pub fn c_header_at(minor: u16) -> String {
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
        "#define KILN_ABI_MAJOR {ABI_MAJOR}\n#define KILN_ABI_MINOR {minor}\n"
    ));
    h.push_str(&format!(
        "#define KILN_ABI_FINGERPRINT 0x{:016x}ull\n",
        fingerprint_at(minor)
    ));
    h.push_str("#define KILN_ENTRY_SYMBOL \"kiln_backend_header\"\n\n");
    h.push_str("typedef enum KilnStatus {\n    KILN_OK = 0,\n    KILN_INVALID_ARGUMENT = 1,\n");
    h.push_str(
        "    KILN_UNSUPPORTED = 2,\n    KILN_OUT_OF_MEMORY = 3,\n    KILN_CONTEXT_FULL = 4,\n",
    );
    h.push_str("    KILN_INTERNAL = 5,\n    KILN_PANIC = 6\n} KilnStatus;\n\n");
    h.push_str("#define KILN_DEVICE_CPU 0u\n#define KILN_DEVICE_GPU 1u\n");
    h.push_str("#define KILN_OUTPUT_LOGITS 1u\n#define KILN_OUTPUT_TOP_N 2u\n");
    if minor >= 1 {
        h.push_str("#define KILN_CAP_PROFILE \"kiln.profile.v1\" /* since 2.1 */\n");
    }
    h.push('\n');
    h.push_str("typedef struct KilnBackend KilnBackend;\ntypedef struct KilnModel KilnModel;\n");
    h.push_str("typedef struct KilnContext KilnContext;\n\n");
    for s in STRUCTS.iter().filter(|s| s.since <= minor) {
        if s.since > 0 {
            h.push_str(&format!("/* since {ABI_MAJOR}.{} */\n", s.since));
        }
        h.push_str(&format!("typedef struct {} {{\n", s.name));
        for f in s.fields.iter().filter(|f| f.since <= minor) {
            if f.since > 0 {
                h.push_str(&format!(
                    "    {}; /* since {ABI_MAJOR}.{} */\n",
                    f.decl, f.since
                ));
            } else {
                h.push_str(&format!("    {};\n", f.decl));
            }
        }
        h.push_str(&format!("}} {};\n\n", s.name));
    }
    if minor >= 1 {
        h.push_str("/* The function of capability KILN_CAP_PROFILE (since 2.1). */\n");
        h.push_str("typedef int32_t (*KilnProfileFn)(KilnContext *ctx, uint32_t enable, KilnProfile *out, KilnError *err);\n\n");
    }
    h.push_str("#ifdef __cplusplus\n}\n#endif\n\n#endif /* KILN_BACKEND_H */\n");
    h
}
