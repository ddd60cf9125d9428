//! The "ban" Kiln sampler in Zig (sampler ABI v1, see sdk/sampler/ABI.md).
//!
//! Policy: greedy over the full logits row, except that the token ids listed in the config
//! (`{"ban": [7042, 12]}`) are never chosen. An empty config bans nothing.
//!
//! Freestanding, no std: a bump allocator over the wasm linear memory and a tiny parser for the
//! one config shape it accepts. Build:
//!
//!   python3 -m ziglang build-exe ban.zig -target wasm32-freestanding -fno-entry -rdynamic \
//!       -O ReleaseSmall -femit-bin=zig-ban.wasm

/// The one host function this module uses.
extern "kiln" fn set_error(ptr: [*]const u8, len: i32) void;

// ---- bump allocator -------------------------------------------------------------------------

extern var __heap_base: u8;
var heap_top: u32 = 0;

export fn kiln_alloc(size: i32) i32 {
    if (size < 0) return 0;
    if (heap_top == 0) heap_top = @intCast(@intFromPtr(&__heap_base));
    const start = (heap_top + 7) & ~@as(u32, 7);
    const end, const overflow = @addWithOverflow(start, @as(u32, @intCast(size)));
    if (overflow != 0) return 0;
    const have: u64 = @as(u64, @wasmMemorySize(0)) * 65536;
    if (end > have) {
        const pages: u32 = @intCast((end - have + 65535) / 65536);
        if (@wasmMemoryGrow(0, pages) < 0) return 0;
    }
    heap_top = end;
    return @bitCast(start);
}

// ---- state ----------------------------------------------------------------------------------

/// Bitset: bit (id % 32) of word (id / 32) set = id is banned.
var banned: [*]u32 = undefined;
var vocab: i32 = 0;

fn fail(msg: []const u8) i32 {
    set_error(msg.ptr, @intCast(msg.len));
    return -1;
}

// ---- config: "" | {} | {"ban": [id, ...]} (whitespace allowed) -------------------------------

const shape = "ban: config must be {\"ban\": [token ids]}";

const Parser = struct {
    s: []const u8,
    i: usize = 0,

    fn skipWs(p: *Parser) void {
        while (p.i < p.s.len and (p.s[p.i] == ' ' or p.s[p.i] == '\t' or p.s[p.i] == '\n' or p.s[p.i] == '\r')) p.i += 1;
    }

    fn eat(p: *Parser, word: []const u8) bool {
        p.skipWs();
        if (p.s.len - p.i < word.len) return false;
        for (word, 0..) |c, k| {
            if (p.s[p.i + k] != c) return false;
        }
        p.i += word.len;
        return true;
    }

    fn isDigit(p: *Parser) bool {
        return p.i < p.s.len and p.s[p.i] >= '0' and p.s[p.i] <= '9';
    }
};

fn parseConfig(s: []const u8) i32 {
    var p = Parser{ .s = s };
    p.skipWs();
    if (p.i == s.len) return 0; // empty config: ban nothing
    if (!p.eat("{")) return fail(shape);
    if (!p.eat("}")) {
        if (!p.eat("\"ban\"") or !p.eat(":") or !p.eat("[")) return fail(shape);
        if (!p.eat("]")) {
            while (true) {
                p.skipWs();
                if (!p.isDigit()) return fail(shape);
                var id: i64 = 0;
                while (p.isDigit()) : (p.i += 1) {
                    id = id * 10 + (s[p.i] - '0');
                    if (id >= vocab) return fail("ban: token id out of range");
                }
                const u: u32 = @intCast(id);
                banned[u / 32] |= @as(u32, 1) << @intCast(u % 32);
                if (p.eat("]")) break;
                if (!p.eat(",")) return fail(shape);
            }
        }
        if (!p.eat("}")) return fail(shape);
    }
    p.skipWs();
    if (p.i != s.len) return fail(shape);
    return 0; // the full view
}

// ---- the ABI --------------------------------------------------------------------------------

export fn kiln_abi_version() i32 {
    return 1;
}

export fn kiln_init(config_ptr: i32, config_len: i32, seed: i64, n_vocab: i32) i32 {
    _ = seed; // greedy: no randomness
    if (n_vocab <= 0) return fail("ban: empty vocabulary");
    vocab = n_vocab;
    const words: usize = @intCast(@divTrunc(n_vocab + 31, 32));
    const ptr = kiln_alloc(@intCast(words * 4));
    if (ptr == 0) return fail("ban: out of memory");
    banned = @ptrFromInt(@as(usize, @intCast(ptr)));
    for (0..words) |w| banned[w] = 0;
    if (config_len <= 0) return 0;
    const cfg: [*]const u8 = @ptrFromInt(@as(usize, @intCast(config_ptr)));
    return parseConfig(cfg[0..@intCast(config_len)]);
}

export fn kiln_sample(buf: i32, n: i32, lse: f32) i32 {
    _ = lse; // NaN in the full view
    const logits: [*]const f32 = @ptrFromInt(@as(usize, @intCast(buf)));
    const count: usize = @intCast(@max(0, @min(n, vocab)));
    var best: i32 = -1;
    var best_logit: f32 = -std_inf;
    for (0..count) |i| {
        if (banned[i / 32] & (@as(u32, 1) << @intCast(i % 32)) != 0) continue;
        // First maximum wins; NaN and -inf never do.
        if (logits[i] > best_logit) {
            best_logit = logits[i];
            best = @intCast(i);
        }
    }
    if (best < 0) {
        _ = fail("ban: every token is banned or -inf");
        return -2;
    }
    return best;
}

const std_inf: f32 = @bitCast(@as(u32, 0x7f80_0000));

export fn kiln_accept(token: i32) void {
    _ = token;
}

export fn kiln_reset() void {}
