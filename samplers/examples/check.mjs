// Checks the built "ban" samplers against sampler ABI v1 without Kiln: node instantiates each
// module with a stand-in for the host's `kiln` imports, then drives it the way the host does
// (alloc + write config, init, alloc the step buffer, sample). Every module must make the same
// choices and report the same errors. Usage: node check.mjs out/*.wasm
import { readFileSync } from "node:fs";
import { basename } from "node:path";

const HOST_IMPORTS = ["n_vocab", "token_bytes", "special_token", "is_eog", "seq_len", "seq_tokens", "set_error"];
const REQUIRED = ["memory", "kiln_abi_version", "kiln_alloc", "kiln_init", "kiln_sample", "kiln_accept", "kiln_reset"];
const N_VOCAB = 49152;

function fail(msg) {
  console.error(`check: ${msg}`);
  process.exit(1);
}

async function load(file) {
  const module = new WebAssembly.Module(readFileSync(file));
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module !== "kiln" || !HOST_IMPORTS.includes(imp.name)) {
      fail(`${file}: forbidden import ${imp.module}.${imp.name}`);
    }
  }
  const exports = WebAssembly.Module.exports(module).map((e) => e.name);
  for (const name of REQUIRED) if (!exports.includes(name)) fail(`${file}: missing export ${name}`);
  const state = { error: null };
  let inst;
  const kiln = {
    set_error(ptr, len) {
      state.error = new TextDecoder().decode(new Uint8Array(inst.exports.memory.buffer, ptr, len));
    },
    n_vocab: () => N_VOCAB,
  };
  inst = new WebAssembly.Instance(module, { kiln });
  return { x: inst.exports, state };
}

// One sequence: returns [init result, error, choices for each logits row].
async function run(file, config, rows) {
  const { x, state } = await load(file);
  if (x.kiln_abi_version() !== 1) fail(`${file}: kiln_abi_version() != 1`);
  const bytes = new TextEncoder().encode(config);
  let ptr = 0;
  if (bytes.length > 0) {
    ptr = x.kiln_alloc(bytes.length);
    if (ptr === 0 || ptr % 8 !== 0) fail(`${file}: kiln_alloc gave ${ptr}`);
    new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
  }
  const view = x.kiln_init(ptr, bytes.length, 42n, N_VOCAB);
  if (view < 0) return [view, state.error, []];
  if (view !== 0) fail(`${file}: expected the full view, got ${view}`);
  const initError = state.error;
  const buf = x.kiln_alloc(N_VOCAB * 4);
  if (buf === 0 || buf % 8 !== 0) fail(`${file}: kiln_alloc gave ${buf}`);
  const choices = [];
  for (const row of rows) {
    new Float32Array(x.memory.buffer, buf, N_VOCAB).set(row); // memory may have grown: new view
    state.error = null;
    const t = x.kiln_sample(buf, N_VOCAB, NaN);
    choices.push(t < 0 ? [t, state.error] : t);
    if (t >= 0) x.kiln_accept(t);
  }
  x.kiln_reset();
  return [view, initError, choices];
}

// Deterministic pseudo-random logits.
function rows(count) {
  let s = 0x2545f491;
  const out = [];
  for (let r = 0; r < count; r++) {
    const row = new Float32Array(N_VOCAB);
    for (let i = 0; i < N_VOCAB; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      row[i] = (s >>> 8) / 65536 - 128;
    }
    out.push(row);
  }
  return out;
}

const data = rows(3);
const argmax = (row, banned = []) => {
  let best = -1;
  for (let i = 0; i < row.length; i++) if (!banned.includes(i) && (best < 0 || row[i] > row[best])) best = i;
  return best;
};
const top = data.map((r) => argmax(r));
const special = new Float32Array(N_VOCAB).fill(-Infinity);
special[5] = NaN;
special[9] = 3;
special[11] = 3; // a tie: the first maximum wins
special[7042] = 4;
const allBanned = new Float32Array(N_VOCAB).fill(-Infinity);
allBanned[7042] = 1;

const cases = [
  { config: "", rows: data, want: [0, null, top] },
  { config: "{}", rows: data, want: [0, null, top] },
  { config: `{"ban":[${top[0]}]}`, rows: data.slice(0, 1), want: [0, null, [argmax(data[0], [top[0]])]] },
  { config: ` {\n "ban" : [ ${top.join(" , ")} ] } `, rows: data,
    want: [0, null, data.map((r) => argmax(r, top))] },
  { config: '{"ban":[7042]}', rows: [special], want: [0, null, [9]] },
  { config: '{"ban":[]}', rows: [special], want: [0, null, [7042]] },
  { config: '{"ban":[7042]}', rows: [allBanned], want: [0, null, [[-2, "ban: every token is banned or -inf"]]] },
];
const SHAPE = 'ban: config must be {"ban": [token ids]}';
for (const bad of ["not json", "{", '{"ban":"x"}', '{"ban":[1,]}', '{"ban":[-1]}', '{"ban":[1]} x', '{"ban":[1]',
  '{"bad":[1]}', '{"ban":[1.5]}', "[1]"]) {
  cases.push({ config: bad, rows: [], want: [-1, SHAPE, []] });
}
for (const big of ["49152", "99999999999999999999999999"]) {
  cases.push({ config: `{"ban":[${big}]}`, rows: [], want: [-1, "ban: token id out of range", []] });
}

const files = process.argv.slice(2);
if (files.length === 0) fail("usage: node check.mjs FILE.wasm...");
for (const file of files) {
  for (const c of cases) {
    const got = await run(file, c.config, c.rows);
    if (JSON.stringify(got) !== JSON.stringify(c.want)) {
      fail(`${basename(file)} with config ${JSON.stringify(c.config)}: got ${JSON.stringify(got)}, want ${JSON.stringify(c.want)}`);
    }
  }
  console.log(`check: ${basename(file)}: ${cases.length} cases ok`);
}
