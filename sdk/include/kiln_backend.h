/* kiln_backend.h: Kiln backend ABI. Generated from kiln-sdk's abi/layout.rs;
 * do not edit by hand (a test checks this file against the Rust definitions).
 *
 * A backend library exports one symbol, `kiln_backend_header`, a static
 * KilnBackendHeader. The host checks magic, ABI version, sizes and the layout
 * fingerprint before calling anything. Every function returns a KilnStatus and
 * fills the host-owned KilnError on failure; nothing may unwind across the ABI. */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_ABI_MAGIC 0x4E4C494Bu /* "KILN" little-endian */
#define KILN_ABI_MAJOR 2
#define KILN_ABI_MINOR 1
#define KILN_ABI_FINGERPRINT 0xcf31c5b579ac4830ull
#define KILN_ENTRY_SYMBOL "kiln_backend_header"

typedef enum KilnStatus {
    KILN_OK = 0,
    KILN_INVALID_ARGUMENT = 1,
    KILN_UNSUPPORTED = 2,
    KILN_OUT_OF_MEMORY = 3,
    KILN_CONTEXT_FULL = 4,
    KILN_INTERNAL = 5,
    KILN_PANIC = 6
} KilnStatus;

#define KILN_DEVICE_CPU 0u
#define KILN_DEVICE_GPU 1u
#define KILN_OUTPUT_LOGITS 1u
#define KILN_OUTPUT_TOP_N 2u
#define KILN_CAP_PROFILE "kiln.profile.v1" /* since 2.1 */

typedef struct KilnBackend KilnBackend;
typedef struct KilnModel KilnModel;
typedef struct KilnContext KilnContext;

typedef struct KilnError {
    int32_t code;
    char message[1020];
} KilnError;

typedef struct KilnStr {
    const uint8_t *ptr;
    uint64_t len;
} KilnStr;

typedef struct KilnBackendInfo {
    uint32_t struct_size;
    char name[64];
    char version[64];
    char description[256];
    uint32_t n_devices;
} KilnBackendInfo;

typedef struct KilnDeviceInfo {
    uint32_t struct_size;
    char name[128];
    uint32_t kind;
    uint64_t total_memory;
    uint64_t free_memory;
} KilnDeviceInfo;

typedef struct KilnScore {
    uint32_t struct_size;
    uint32_t score;
    char reason[256];
} KilnScore;

typedef struct KilnBackendOptions {
    uint32_t struct_size;
    uint32_t n_threads;
    uint32_t device;
} KilnBackendOptions;

typedef struct KilnMetaKv {
    KilnStr key;
    uint32_t value_type;
    KilnStr raw;
} KilnMetaKv;

typedef struct KilnTensorDesc {
    KilnStr name;
    uint32_t ggml_type;
    uint32_t n_dims;
    uint64_t dims[4];
    const uint8_t *data;
    uint64_t n_bytes;
} KilnTensorDesc;

typedef struct KilnGgufView {
    uint32_t struct_size;
    uint32_t version;
    uint64_t alignment;
    uint64_t n_kv;
    const KilnMetaKv *kv;
    uint64_t n_tensors;
    const KilnTensorDesc *tensors;
} KilnGgufView;

typedef struct KilnModelParams {
    uint32_t struct_size;
    uint32_t flags;
} KilnModelParams;

typedef struct KilnModelInfo {
    uint32_t struct_size;
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_layer;
    uint32_t n_embd;
    uint64_t weight_bytes;
    uint64_t kv_bytes_per_token;
    char arch[32];
} KilnModelInfo;

typedef struct KilnContextParams {
    uint32_t struct_size;
    uint32_t n_ctx;
    uint32_t n_seq_max;
    uint32_t kv_type;
    uint32_t n_batch_max;
    uint32_t n_outputs_max;
} KilnContextParams;

typedef struct KilnContextInfo {
    uint32_t struct_size;
    uint32_t n_ctx;
    uint32_t n_seq_max;
    uint32_t n_batch_max;
    uint32_t n_outputs_max;
    uint64_t kv_bytes;
    uint64_t scratch_bytes;
} KilnContextInfo;

typedef struct KilnBatch {
    uint32_t struct_size;
    uint32_t n_tokens;
    const int32_t *tokens;
    const int32_t *positions;
    const int32_t *seq_ids;
} KilnBatch;

typedef struct KilnRowOutput {
    uint32_t row;
    uint32_t kind;
    uint32_t top_n;
    uint32_t n_banned;
    const int32_t *banned;
    uint32_t n_allowed;
    const int32_t *allowed;
    float *logits;
    int32_t *top_ids;
    float *top_logits;
    float *lse;
    int32_t target;
    float *target_logit;
} KilnRowOutput;

typedef struct KilnOutputs {
    uint32_t struct_size;
    uint32_t n_rows;
    uint32_t row_size;
    const KilnRowOutput *rows;
} KilnOutputs;

/* since 2.1 */
typedef struct KilnOpStat {
    char name[32]; /* since 2.1 */
    uint64_t calls; /* since 2.1 */
    uint64_t nanos; /* since 2.1 */
} KilnOpStat;

/* since 2.1 */
typedef struct KilnProfile {
    uint32_t struct_size; /* since 2.1 */
    uint64_t n_forward; /* since 2.1 */
    uint32_t n_ops; /* since 2.1 */
    KilnOpStat ops[32]; /* since 2.1 */
} KilnProfile;

typedef struct KilnBackendApi {
    uint32_t struct_size;
    int32_t (*get_info)(KilnBackendInfo *out, KilnError *err);
    int32_t (*get_device)(uint32_t index, KilnDeviceInfo *out, KilnError *err);
    int32_t (*get_score)(KilnScore *out, KilnError *err);
    int32_t (*supports_type)(uint32_t ggml_type, uint8_t *out, KilnError *err);
    int32_t (*backend_create)(const KilnBackendOptions *opts, KilnBackend **out, KilnError *err);
    void (*backend_destroy)(KilnBackend *backend);
    int32_t (*model_load)(KilnBackend *backend, const KilnGgufView *view, const KilnModelParams *params, KilnModel **out, KilnError *err);
    int32_t (*model_info)(const KilnModel *model, KilnModelInfo *out, KilnError *err);
    void (*model_free)(KilnModel *model);
    int32_t (*context_create)(const KilnModel *model, const KilnContextParams *params, KilnContext **out, KilnError *err);
    int32_t (*context_info)(const KilnContext *ctx, KilnContextInfo *out, KilnError *err);
    void (*context_free)(KilnContext *ctx);
    int32_t (*seq_clear)(KilnContext *ctx, int32_t seq, KilnError *err);
    int32_t (*seq_truncate)(KilnContext *ctx, int32_t seq, uint32_t n_keep, KilnError *err);
    int32_t (*seq_copy)(KilnContext *ctx, int32_t src, int32_t dst, uint32_t n, KilnError *err);
    int32_t (*forward)(KilnContext *ctx, const KilnBatch *batch, const KilnOutputs *outputs, KilnError *err);
    int32_t (*score_model)(const KilnGgufView *view, KilnScore *out, KilnError *err); /* since 2.1 */
    const void *(*get_proc_address)(const char *name); /* since 2.1 */
} KilnBackendApi;

typedef struct KilnBackendHeader {
    uint32_t magic;
    uint16_t abi_major;
    uint16_t abi_minor;
    uint32_t header_size;
    uint32_t api_size;
    uint64_t layout_fingerprint;
    const char *sdk_version;
    const KilnBackendApi *api;
} KilnBackendHeader;

/* The function of capability KILN_CAP_PROFILE (since 2.1). */
typedef int32_t (*KilnProfileFn)(KilnContext *ctx, uint32_t enable, KilnProfile *out, KilnError *err);

#ifdef __cplusplus
}
#endif

#endif /* KILN_BACKEND_H */
