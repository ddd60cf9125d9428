/* A minimal Kiln backend written in C against sdk/include/kiln_backend.h.
 *
 * It reports one name, no devices and a score of 0 (so the host never picks it on its own),
 * and refuses to load models. It shows the whole ABI surface a C or C++ backend implements,
 * and the test suite builds it (plus deliberately broken variants) to check how the host loads
 * and refuses plugins.
 *
 * Build: cc -shared -fPIC -I../../sdk/include null_backend.c -o libkiln_backend_cnull.so
 * Test-only switches: -DTEST_ABI_MAJOR=N, -DTEST_FINGERPRINT=X, -DTEST_ABORT_ON_CALL. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "kiln_backend.h"

#ifndef TEST_ABI_MAJOR
#define TEST_ABI_MAJOR KILN_ABI_MAJOR
#endif
#ifndef TEST_FINGERPRINT
#define TEST_FINGERPRINT KILN_ABI_FINGERPRINT
#endif
#ifdef TEST_ABORT_ON_CALL
#define ENTER() abort()
#else
#define ENTER() ((void)0)
#endif

static void copy(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

static int32_t fail(KilnError *err, int32_t code, const char *msg) {
    if (err) {
        err->code = code;
        copy(err->message, sizeof err->message, msg);
    }
    return code;
}

/* Whether the host's struct (its struct_size) has room for FIELD: a backend writes only the
 * fields both sides know, so hosts of older and newer minors work alike. */
#define HAS(ptr, field) \
    ((size_t)(ptr)->struct_size >= offsetof(__typeof__(*(ptr)), field) + sizeof((ptr)->field))

static int32_t get_info(KilnBackendInfo *out, KilnError *err) {
    ENTER();
    if (!out) return fail(err, KILN_INVALID_ARGUMENT, "null out");
    if (HAS(out, name)) copy(out->name, sizeof out->name, "c-null");
    if (HAS(out, version)) copy(out->version, sizeof out->version, "0.1.0");
    if (HAS(out, description))
        copy(out->description, sizeof out->description, "example backend written in C; runs nothing");
    if (HAS(out, n_devices)) out->n_devices = 0;
    return KILN_OK;
}

static int32_t get_device(uint32_t index, KilnDeviceInfo *out, KilnError *err) {
    ENTER();
    (void)index; (void)out;
    return fail(err, KILN_INVALID_ARGUMENT, "this backend has no devices");
}

static int32_t get_score(KilnScore *out, KilnError *err) {
    ENTER();
    if (!out) return fail(err, KILN_INVALID_ARGUMENT, "null out");
    if (HAS(out, score)) out->score = 0;
    if (HAS(out, reason))
        copy(out->reason, sizeof out->reason, "example backend: it has no device and runs no model");
    return KILN_OK;
}

static int32_t score_model(const KilnGgufView *view, KilnScore *out, KilnError *err) {
    ENTER();
    (void)view;
    if (!out) return fail(err, KILN_INVALID_ARGUMENT, "null out");
    if (HAS(out, score)) out->score = 0;
    if (HAS(out, reason)) copy(out->reason, sizeof out->reason, "example backend: runs no model");
    return KILN_OK;
}

static const void *get_proc_address(const char *name) {
    (void)name;
    return NULL; /* no optional capabilities */
}

static int32_t supports_type(uint32_t ggml_type, uint8_t *out, KilnError *err) {
    ENTER();
    (void)ggml_type;
    if (!out) return fail(err, KILN_INVALID_ARGUMENT, "null out");
    *out = 0;
    return KILN_OK;
}

static int32_t backend_create(const KilnBackendOptions *opts, KilnBackend **out, KilnError *err) {
    ENTER();
    (void)opts; (void)out;
    return fail(err, KILN_UNSUPPORTED, "the c-null backend cannot be instantiated");
}

static void backend_destroy(KilnBackend *b) { (void)b; }

static int32_t model_load(KilnBackend *b, const KilnGgufView *v, const KilnModelParams *p,
                          KilnModel **out, KilnError *err) {
    ENTER();
    (void)b; (void)v; (void)p; (void)out;
    return fail(err, KILN_UNSUPPORTED, "the c-null backend loads no models");
}

static int32_t model_info(const KilnModel *m, KilnModelInfo *out, KilnError *err) {
    (void)m; (void)out;
    return fail(err, KILN_INVALID_ARGUMENT, "no model");
}

static void model_free(KilnModel *m) { (void)m; }

static int32_t context_create(const KilnModel *m, const KilnContextParams *p, KilnContext **out,
                              KilnError *err) {
    (void)m; (void)p; (void)out;
    return fail(err, KILN_INVALID_ARGUMENT, "no model");
}

static int32_t context_info(const KilnContext *c, KilnContextInfo *out, KilnError *err) {
    (void)c; (void)out;
    return fail(err, KILN_INVALID_ARGUMENT, "no context");
}

static void context_free(KilnContext *c) { (void)c; }

static int32_t seq_clear(KilnContext *c, int32_t s, KilnError *err) {
    (void)c; (void)s;
    return fail(err, KILN_INVALID_ARGUMENT, "no context");
}

static int32_t seq_truncate(KilnContext *c, int32_t s, uint32_t n, KilnError *err) {
    (void)c; (void)s; (void)n;
    return fail(err, KILN_INVALID_ARGUMENT, "no context");
}

static int32_t seq_copy(KilnContext *c, int32_t a, int32_t b, uint32_t n, KilnError *err) {
    (void)c; (void)a; (void)b; (void)n;
    return fail(err, KILN_INVALID_ARGUMENT, "no context");
}

static int32_t forward(KilnContext *c, const KilnBatch *b, const KilnOutputs *o, KilnError *err) {
    (void)c; (void)b; (void)o;
    return fail(err, KILN_INVALID_ARGUMENT, "no context");
}

static const KilnBackendApi api = {
    sizeof(KilnBackendApi), get_info, get_device, get_score, supports_type, backend_create,
    backend_destroy, model_load, model_info, model_free, context_create, context_info,
    context_free, seq_clear, seq_truncate, seq_copy, forward, score_model, get_proc_address,
};

const KilnBackendHeader kiln_backend_header = {
    KILN_ABI_MAGIC, TEST_ABI_MAJOR, KILN_ABI_MINOR, sizeof(KilnBackendHeader), sizeof(KilnBackendApi),
    TEST_FINGERPRINT, "c-example", &api,
};
