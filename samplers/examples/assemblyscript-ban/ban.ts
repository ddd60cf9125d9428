// The "ban" Kiln sampler in AssemblyScript (sampler ABI v1, see sdk/sampler/ABI.md).
//
// Policy: greedy over the full logits row, except that the token ids listed in the config
// ({"ban": [7042, 12]}) are never chosen. An empty config bans nothing.
//
// Raw memory only (no managed objects), so the stub runtime never allocates: a bump allocator
// over the linear memory and a tiny parser for the one config shape it accepts. Build:
//
//   npx asc ban.ts --outFile assemblyscript-ban.wasm --runtime stub --use abort= -O3 --noAssert

// The one host function this module uses.
@external("kiln", "set_error")
declare function set_error(ptr: usize, len: i32): void;

// ---- bump allocator ---------------------------------------------------------------------------

let heapTop: usize = 0;

export function kiln_alloc(size: i32): usize {
  if (size < 0) return 0;
  if (heapTop == 0) heapTop = __heap_base;
  const start = (heapTop + 7) & ~(<usize>7);
  const end = <u64>start + <u64>size;
  const have = <u64>memory.size() << 16;
  if (end > have) {
    const pages = <i32>((end - have + 65535) >> 16);
    if (memory.grow(pages) < 0) return 0;
  }
  heapTop = <usize>end;
  return start;
}

// ---- state ------------------------------------------------------------------------------------

let banned: usize = 0; // bitset: bit (id % 32) of word (id / 32) set = id is banned
let vocab: i32 = 0;

// Reports an ASCII message (copied to a scratch buffer as UTF-8); returns -1.
function fail(msg: string): i32 {
  const len = msg.length;
  const buf = kiln_alloc(len);
  if (buf != 0) {
    for (let i = 0; i < len; i++) store<u8>(buf + i, <u8>msg.charCodeAt(i));
    set_error(buf, len);
  }
  return -1;
}

// ---- config: "" | {} | {"ban": [id, ...]} (whitespace allowed) --------------------------------

const SHAPE = 'ban: config must be {"ban": [token ids]}';

let cur: usize = 0;
let end: usize = 0;

function skipWs(): void {
  while (cur < end) {
    const c = load<u8>(cur);
    if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
    cur++;
  }
}

function eat(c: u8): bool {
  skipWs();
  if (cur < end && load<u8>(cur) == c) {
    cur++;
    return true;
  }
  return false;
}

// Consumes the 5 bytes `"ban"` (with the quotes) after any whitespace.
function eatBan(): bool {
  skipWs();
  if (cur + 5 > end) return false;
  const word = '"ban"';
  for (let i = 0; i < 5; i++) {
    if (<i32>load<u8>(cur + i) != word.charCodeAt(i)) return false;
  }
  cur += 5;
  return true;
}

function isDigit(): bool {
  return cur < end && load<u8>(cur) >= 0x30 && load<u8>(cur) <= 0x39;
}

function parseConfig(ptr: usize, len: i32): i32 {
  cur = ptr;
  end = ptr + len;
  skipWs();
  if (cur == end) return 0; // empty config: ban nothing
  if (!eat(0x7b)) return fail(SHAPE); // {
  if (!eat(0x7d)) { // }
    if (!eatBan() || !eat(0x3a) || !eat(0x5b)) return fail(SHAPE); // "ban" : [
    if (!eat(0x5d)) { // ]
      while (true) {
        skipWs();
        if (!isDigit()) return fail(SHAPE);
        let id: i64 = 0;
        while (isDigit()) {
          id = id * 10 + <i64>(load<u8>(cur) - 0x30);
          if (id >= <i64>vocab) return fail("ban: token id out of range");
          cur++;
        }
        const w = banned + (<usize>(id >> 5) << 2);
        store<u32>(w, load<u32>(w) | (1 << <u32>(id & 31)));
        if (eat(0x5d)) break; // ]
        if (!eat(0x2c)) return fail(SHAPE); // ,
      }
    }
    if (!eat(0x7d)) return fail(SHAPE); // }
  }
  skipWs();
  if (cur != end) return fail(SHAPE);
  return 0; // the full view
}

// ---- the ABI ----------------------------------------------------------------------------------

export function kiln_abi_version(): i32 {
  return 1;
}

export function kiln_init(config_ptr: usize, config_len: i32, seed: i64, n_vocab: i32): i32 {
  // Greedy: the seed is unused.
  if (n_vocab <= 0) return fail("ban: empty vocabulary");
  vocab = n_vocab;
  const bytes = <i32>((<u32>n_vocab + 31) >> 5) << 2;
  banned = kiln_alloc(bytes);
  if (banned == 0) return fail("ban: out of memory");
  for (let i = 0; i < bytes; i += 4) store<u32>(banned + i, 0);
  if (config_len <= 0) return 0;
  return parseConfig(config_ptr, config_len);
}

export function kiln_sample(buf: usize, n: i32, lse: f32): i32 {
  // `lse` is NaN in the full view.
  const count = min(n, vocab);
  let best: i32 = -1;
  let bestLogit: f32 = -Infinity;
  for (let i = 0; i < count; i++) {
    if ((load<u32>(banned + (<usize>(i >> 5) << 2)) >> (i & 31)) & 1) continue;
    const v = load<f32>(buf + (<usize>i << 2));
    if (v > bestLogit) { // first maximum wins; NaN and -inf never do
      bestLogit = v;
      best = i;
    }
  }
  if (best < 0) {
    fail("ban: every token is banned or -inf");
    return -2;
  }
  return best;
}

export function kiln_accept(token: i32): void {}

export function kiln_reset(): void {}
