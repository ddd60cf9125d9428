/* The "ban" Kiln sampler in C (sampler ABI v1, see sdk/sampler/ABI.md).
 *
 * Policy: greedy over the full logits row, except that the token ids listed in the config
 * (`{"ban": [7042, 12]}`) are never chosen. An empty config bans nothing.
 *
 * No libc: a bump allocator over the wasm linear memory, and a tiny parser for the one config
 * shape it accepts. Build (clang + lld):
 *
 *   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--export-dynamic \
 *         -o c-ban.wasm ban.c
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;

#define EXPORT __attribute__((visibility("default")))

/* The one host function this module uses (module `kiln`). */
__attribute__((import_module("kiln"), import_name("set_error"))) void kiln_set_error(const u8 *ptr,
                                                                                      i32 len);

/* ---- bump allocator ------------------------------------------------------------------------ */

extern u8 __heap_base; /* first free byte after the data and the stack, from wasm-ld */
static u32 heap_top;

EXPORT i32 kiln_alloc(i32 size) {
    if (size < 0) return 0;
    if (heap_top == 0) heap_top = (u32)&__heap_base;
    u32 start = (heap_top + 7u) & ~7u;
    u32 end = start + (u32)size;
    if (end < start) return 0; /* wrapped around */
    u32 have = (u32)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        u32 pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (__SIZE_TYPE__)-1) return 0;
    }
    heap_top = end;
    return (i32)start;
}

/* ---- state --------------------------------------------------------------------------------- */

static u32 *banned; /* bitset: bit (id % 32) of word (id / 32) set = id is banned */
static i32 vocab;

static i32 fail(const char *msg) {
    i32 n = 0;
    while (msg[n]) n++;
    kiln_set_error((const u8 *)msg, n);
    return -1;
}

/* ---- config: "" | {} | {"ban": [id, ...]} (whitespace allowed) ------------------------------ */

static const u8 *cur, *end;

static void skip_ws(void) {
    while (cur < end && (*cur == ' ' || *cur == '\t' || *cur == '\n' || *cur == '\r')) cur++;
}

static int eat(char c) {
    skip_ws();
    if (cur < end && *cur == (u8)c) {
        cur++;
        return 1;
    }
    return 0;
}

static int eat_word(const char *w) {
    skip_ws();
    const u8 *p = cur;
    for (; *w; w++, p++)
        if (p >= end || *p != (u8)*w) return 0;
    cur = p;
    return 1;
}

#define SHAPE "ban: config must be {\"ban\": [token ids]}"

static i32 parse_config(const u8 *config, i32 len) {
    cur = config;
    end = config + len;
    skip_ws();
    if (cur == end) return 0; /* empty config: ban nothing */
    if (!eat('{')) return fail(SHAPE);
    if (!eat('}')) {
        if (!eat_word("\"ban\"") || !eat(':') || !eat('[')) return fail(SHAPE);
        if (!eat(']')) {
            for (;;) {
                skip_ws();
                if (cur == end || *cur < '0' || *cur > '9') return fail(SHAPE);
                i64 id = 0;
                while (cur < end && *cur >= '0' && *cur <= '9') {
                    id = id * 10 + (*cur - '0');
                    if (id >= vocab) return fail("ban: token id out of range");
                    cur++;
                }
                banned[id / 32] |= 1u << (id % 32);
                if (eat(']')) break;
                if (!eat(',')) return fail(SHAPE);
            }
        }
        if (!eat('}')) return fail(SHAPE);
    }
    skip_ws();
    if (cur != end) return fail(SHAPE);
    return 0;
}

/* ---- the ABI ------------------------------------------------------------------------------- */

EXPORT i32 kiln_abi_version(void) { return 1; }

EXPORT i32 kiln_init(i32 config_ptr, i32 config_len, i64 seed, i32 n_vocab) {
    (void)seed; /* greedy: no randomness */
    if (n_vocab <= 0) return fail("ban: empty vocabulary");
    vocab = n_vocab;
    i32 words = (n_vocab + 31) / 32;
    banned = (u32 *)kiln_alloc(words * 4);
    if (!banned) return fail("ban: out of memory");
    for (i32 i = 0; i < words; i++) banned[i] = 0;
    if (config_len <= 0) return 0; /* empty config: ban nothing, full view */
    return parse_config((const u8 *)config_ptr, config_len); /* 0 = full view */
}

EXPORT i32 kiln_sample(i32 buf, i32 n, float lse) {
    (void)lse; /* NaN in the full view */
    const float *logits = (const float *)buf;
    i32 best = -1;
    float best_logit = -__builtin_inff();
    for (i32 i = 0; i < n && i < vocab; i++) {
        if (banned[i / 32] & (1u << (i % 32))) continue;
        if (logits[i] > best_logit) { /* first maximum wins; NaN and -inf never do */
            best_logit = logits[i];
            best = i;
        }
    }
    if (best < 0) {
        fail("ban: every token is banned or -inf");
        return -2;
    }
    return best;
}

EXPORT void kiln_accept(i32 token) { (void)token; }

EXPORT void kiln_reset(void) {}
