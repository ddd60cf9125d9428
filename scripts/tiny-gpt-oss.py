#!/usr/bin/env python3
"""A tiny random-weight gpt-oss: its GGUF, and HF transformers' reference logits.

One command regenerates everything:

    python3 scripts/tiny-gpt-oss.py                 # GGUF + reference (needs torch, transformers)
    python3 scripts/tiny-gpt-oss.py --gguf-only --out /tmp/x   # the GGUF alone (numpy + gguf)

The model has gpt-oss's structure, shrunk: 4 blocks alternating sliding-window (first) and full
attention, attention sinks, biases on q/k/v/o, YaRN RoPE with the real model's parameters, 8
experts of which 4 are used, the clamped SwiGLU (limit 7, alpha 1.702), expert weights in MXFP4.
Every weight comes from a seeded PCG64 stream (its raw 64-bit outputs, which numpy guarantees
stable) turned into uniform floats with exact arithmetic, so `--gguf-only` rebuilds the same
file bit for bit without torch; the SHA-256 of the tensor data is stored with the reference and
checked on every build.

The GGUF is laid out as llama.cpp's convert_hf_to_gguf.py writes gpt-oss (general.architecture
"gpt-oss", the `gpt-oss.*` keys, token_embd / blk.N.* / output_norm / output, the experts as 3-D
ffn_{gate,up,down}_exps with gate and up de-interleaved from HF's fused gate_up_proj), with a
small byte-level BPE vocabulary learned here on tests/data/perplexity/shakespeare.txt, the
harmony special tokens at the same offsets from the end of the normal vocabulary as in
o200k_harmony, and a harmony chat template.

The full mode loads exactly the weights of the GGUF (the MXFP4 experts dequantized) into
transformers' GptOssForCausalLM (float32, eager attention, so the sinks are honoured), runs one
forward over a fixed sequence of SEQ_LEN tokens and writes, under tests/data/tiny-gpt-oss/:
  - logits.npy      little-endian f32 [SEQ_LEN, VOCAB], transformers' logits at every position
  - reference.json  token ids, greedy continuation, seed, script version, config, checks
It also re-derives the logits with an independent float64 numpy forward written from the GGUF's
point of view (de-interleaved experts, ggml shapes) and fails unless both agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

SCRIPT_VERSION = 2
SEED = 20250805

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "tests" / "data" / "tiny-gpt-oss"
TRAIN_TEXT = ROOT / "tests" / "data" / "perplexity" / "shakespeare.txt"

# ---------------------------------------------------------------------------------------------
# Shape of the model (gpt-oss-20b in parentheses).
N_LAYER = 4            # (24) alternating sliding / full, sliding first
N_EMBD = 256           # (2880)
N_HEAD = 8             # (64)
N_HEAD_KV = 2          # (8)
HEAD_DIM = 64          # (64)
N_FF = 160             # (2880) expert width; a multiple of 32 (MXFP4 blocks along the input)
N_EXPERT = 8           # (32)
N_EXPERT_USED = 4      # (4)
SLIDING_WINDOW = 128   # (128)
ROPE_THETA = 150000.0  # (150000)
ROPE_SCALING = {       # as openai/gpt-oss-20b's config.json
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
MAX_POS = 131072       # (131072)
RMS_EPS = 1e-5
SWIGLU_LIMIT = 7.0
SWIGLU_ALPHA = 1.702
SEQ_LEN = 384          # reference positions: three sliding windows
GREEDY_TOKENS = 32

# Tokenizer: 256 byte tokens + N_MERGES merges, then the harmony specials / reserved tokens.
N_NORMAL = 998
N_MERGES = N_NORMAL - 256
VOCAB = 1024
PRE = "llama-bpe"  # gpt-oss uses "gpt-4o" (o200k); Kiln does not know it yet
# o200k_harmony's specials sit at 199998.. (= n_normal + k); the same offsets here.
SPECIALS = {
    0: "<|startoftext|>",
    1: "<|endoftext|>",
    4: "<|return|>",
    5: "<|constrain|>",
    7: "<|channel|>",
    8: "<|start|>",
    9: "<|end|>",
    10: "<|message|>",
    14: "<|call|>",
}
BOS = "<|startoftext|>"
EOS = "<|return|>"
PAD = "<|endoftext|>"

# Pre-tokenizer of `llama-bpe` (llama3), restricted to ASCII text where Python's re is exact.
PRETOK = re.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\nA-Za-z0-9]?[A-Za-z]+"
    r"|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = """{#- A shortened harmony template, modelled on gpt-oss's. -#}
{%- if not reasoning_effort is defined %}{%- set reasoning_effort = "medium" %}{%- endif %}
{%- if messages and messages[0].role in ["system", "developer"] %}
{%- set developer_message = messages[0].content %}{%- set loop_messages = messages[1:] %}
{%- else %}{%- set developer_message = "" %}{%- set loop_messages = messages %}{%- endif %}
<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Knowledge cutoff: 2024-06
Current date: {{ strftime_now("%Y-%m-%d") }}

Reasoning: {{ reasoning_effort }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
{%- if developer_message %}<|start|>developer<|message|># Instructions

{{ developer_message }}

<|end|>{%- endif %}
{%- for message in loop_messages %}
{%- if message.role == "user" %}<|start|>user<|message|>{{ message.content }}<|end|>
{%- elif message.role == "assistant" %}
{%- if message.thinking is defined and message.thinking and loop.last %}<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}<|end|>{%- endif %}
<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>
{%- elif message.role == "tool" %}<|start|>functions.{{ message.name }} to=assistant<|channel|>commentary<|message|>{{ message.content }}<|end|>
{%- else %}{{ raise_exception("unexpected role " ~ message.role) }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"""

GREEDY_PROMPT = "<|start|>user<|message|>What is the capital of France?<|end|><|start|>assistant"

# ---------------------------------------------------------------------------------------------
# Byte-level BPE


def byte_to_char() -> list[str]:
    """GPT-2's printable stand-in for every byte."""
    out, nxt = [], 256
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
            out.append(chr(b))
        else:
            out.append(chr(nxt))
            nxt += 1
    return out


B2C = byte_to_char()


def train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Learns `n_merges` merges; ties go to the smallest pair, so the result is deterministic."""
    words = Counter(PRETOK.findall(text))
    seqs = [[B2C[b] for b in w.encode()] for w in words]
    freqs = list(words.values())
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, s in enumerate(seqs):
        for p in zip(s, s[1:]):
            counts[p] += freqs[i]
            where.setdefault(p, set()).add(i)
    merges = []
    while len(merges) < n_merges:
        best = min((p for p, c in counts.items() if c > 0), key=lambda p: (-counts[p], p))
        merges.append(best)
        a, b = best
        for i in sorted(where.pop(best, ())):
            s = seqs[i]
            for p in zip(s, s[1:]):
                counts[p] -= freqs[i]
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
            for p in zip(out, out[1:]):
                counts[p] += freqs[i]
                where.setdefault(p, set()).add(i)
        del counts[best]
    return merges


class Tokenizer:
    def __init__(self, tokens: list[str], merges: list[tuple[str, str]]):
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.specials = {t: i for i, t in enumerate(tokens) if t.startswith("<|")}
        alt = "|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True))
        self.special_re = re.compile(f"({alt})")

    def _bpe(self, word: str) -> list[int]:
        parts = [B2C[b] for b in word.encode()]
        while len(parts) > 1:
            ranked = [(self.ranks.get(p, 1 << 30), k) for k, p in enumerate(zip(parts, parts[1:]))]
            r, k = min(ranked)
            if r == 1 << 30:
                break
            parts[k : k + 2] = [parts[k] + parts[k + 1]]
        return [self.ids[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        """Specials become their ids; the rest must be ASCII (the pre-tokenizer is exact there)."""
        assert text.isascii(), "the reference texts are ASCII"
        out: list[int] = []
        for frag in self.special_re.split(text):
            if frag in self.specials:
                out.append(self.specials[frag])
            elif frag:
                for w in PRETOK.findall(frag):
                    out.extend(self._bpe(w))
        return out


def build_vocab() -> tuple[list[str], list[int], list[tuple[str, str]], str]:
    raw = TRAIN_TEXT.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    merges = train_bpe(raw.decode(), N_MERGES)
    tokens = list(B2C) + [a + b for a, b in merges]
    assert len(set(tokens)) == N_NORMAL, "a merge produced a duplicate token"
    types = [1] * N_NORMAL  # NORMAL
    for k in range(VOCAB - N_NORMAL):
        tokens.append(SPECIALS.get(k, f"<|reserved_{N_NORMAL + k}|>"))
        types.append(3)  # CONTROL, as convert_hf_to_gguf marks <|...|> added tokens
    return tokens, types, merges, sha


# ---------------------------------------------------------------------------------------------
# Weights


class Stream:
    """Uniform floats from PCG64's raw outputs: (raw >> 11) * 2^-53 is exact, the rest is one
    IEEE multiply-add per value, so the values are the same on every platform and numpy."""

    def __init__(self, seed: int):
        self.bg = np.random.PCG64(seed)

    def uniform(self, shape, lo: float, hi: float) -> np.ndarray:
        n = int(np.prod(shape))
        u = (self.bg.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)

    def sym(self, shape, std: float) -> np.ndarray:
        """Uniform with standard deviation `std`."""
        a = std * math.sqrt(3.0)
        return self.uniform(shape, -a, a)


KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float64)


def quantize_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's MXFP4 (block_mxfp4: e8m0 byte, then 16 bytes; byte j holds element j in its low
    nibble and element j+16 in its high one; value = kvalues[q] * 2^(e-128), ggml's "half" e8m0
    convention with doubled E2M1 values). The exponent is ggml's: floor(log2(amax)) - 2 + 127.
    Returns (raw blocks [..., K/32*17] uint8, dequantized float32 of w's shape)."""
    shape = w.shape
    x = w.reshape(-1, 32).astype(np.float64)
    amax = np.abs(x).max(axis=1)
    _, ex = np.frexp(amax)  # amax = m * 2^ex, m in [0.5, 1): floor(log2 amax) = ex - 1
    e = np.where(amax > 0, ex - 1 - 2 + 127, 0).astype(np.int64)
    assert (e >= 1).all() and (e <= 254).all()
    d = np.ldexp(1.0, e - 128)[:, None]
    err = np.abs(KVALUES_MXFP4[None, None, :] * d[:, :, None] - x[:, :, None])
    q = np.argmin(err, axis=2).astype(np.uint8)  # first minimum on ties, as ggml
    blocks = np.empty((x.shape[0], 17), np.uint8)
    blocks[:, 0] = e.astype(np.uint8)
    blocks[:, 1:] = q[:, :16] | (q[:, 16:] << 4)
    deq = (KVALUES_MXFP4[q] * d).astype(np.float32).reshape(shape)
    raw = blocks.reshape(*shape[:-1], shape[-1] // 32 * 17)
    return raw, deq


# Standard deviations of the weights (uniform), relative to 1/sqrt(fan-in) for matrices.
GAINS = {
    "qk": 1.0, "v": 1.0, "o": 0.7, "router": 1.5, "router_bias": 0.5,
    "gate_up": 2.5, "down": 0.12, "output": 2.5,
}


def make_weights() -> dict[str, np.ndarray]:
    """The model in GGUF terms: name -> float32 array (numpy shape = reversed ggml ne), the
    experts dequantized from MXFP4; raw MXFP4 blocks under "<name>#mxfp4"."""
    s = Stream(SEED)
    W: dict[str, np.ndarray] = {}
    H, Q, KV = N_EMBD, N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    W["token_embd.weight"] = s.sym((VOCAB, H), 1.0)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        W[p + "attn_norm.weight"] = s.uniform((H,), 0.8, 1.2)
        W[p + "attn_q.weight"] = s.sym((Q, H), GAINS["qk"] / math.sqrt(H))
        W[p + "attn_q.bias"] = s.sym((Q,), 0.2)
        W[p + "attn_k.weight"] = s.sym((KV, H), GAINS["qk"] / math.sqrt(H))
        W[p + "attn_k.bias"] = s.sym((KV,), 0.2)
        W[p + "attn_v.weight"] = s.sym((KV, H), GAINS["v"] / math.sqrt(H))
        W[p + "attn_v.bias"] = s.sym((KV,), 0.2)
        W[p + "attn_output.weight"] = s.sym((H, Q), GAINS["o"] / math.sqrt(Q))
        W[p + "attn_output.bias"] = s.sym((H,), 0.1)
        W[p + "attn_sinks.weight"] = s.uniform((N_HEAD,), -1.0, 3.0)
        W[p + "post_attention_norm.weight"] = s.uniform((H,), 0.8, 1.2)
        W[p + "ffn_gate_inp.weight"] = s.sym((N_EXPERT, H), GAINS["router"] / math.sqrt(H))
        W[p + "ffn_gate_inp.bias"] = s.sym((N_EXPERT,), GAINS["router_bias"])
        # Gate and up: unit input (normed), std ~2.5 outputs so the +-7 clamp bites sometimes.
        for name in ("ffn_gate_exps", "ffn_up_exps"):
            raw, deq = quantize_mxfp4(s.sym((N_EXPERT, N_FF, H), GAINS["gate_up"] / math.sqrt(H)))
            W[p + name + ".weight"] = deq
            W[p + name + ".weight#mxfp4"] = raw
            W[p + name + ".bias"] = s.sym((N_EXPERT, N_FF), 0.3)
        raw, deq = quantize_mxfp4(s.sym((N_EXPERT, H, N_FF), GAINS["down"] / math.sqrt(N_FF)))
        W[p + "ffn_down_exps.weight"] = deq
        W[p + "ffn_down_exps.weight#mxfp4"] = raw
        W[p + "ffn_down_exps.bias"] = s.sym((N_EXPERT, H), 0.05)
    W["output_norm.weight"] = s.uniform((H,), 0.8, 1.2)
    W["output.weight"] = s.sym((VOCAB, H), GAINS["output"] / math.sqrt(H))
    return W


def tensor_order() -> list[str]:
    names = ["token_embd.weight"]
    for i in range(N_LAYER):
        p = f"blk.{i}."
        names += [p + n for n in (
            "attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
            "attn_v.weight", "attn_v.bias", "attn_output.weight", "attn_output.bias",
            "attn_sinks.weight", "post_attention_norm.weight", "ffn_gate_inp.weight",
            "ffn_gate_inp.bias", "ffn_gate_exps.weight", "ffn_gate_exps.bias",
            "ffn_up_exps.weight", "ffn_up_exps.bias", "ffn_down_exps.weight", "ffn_down_exps.bias",
        )]
    return names + ["output_norm.weight", "output.weight"]


def weights_digest(W: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor as stored in the GGUF: name, type, shape, bytes."""
    h = hashlib.sha256()
    for n in tensor_order():
        raw = W.get(n + "#mxfp4")
        data = raw if raw is not None else W[n]
        h.update(f"{n}|{'MXFP4' if raw is not None else 'F32'}|{W[n].shape}|".encode())
        h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# GGUF


def write_gguf(path: Path, W: dict[str, np.ndarray], vocab) -> None:
    import gguf

    tokens, types, merges, _ = vocab
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("Tiny Gpt Oss")
    w.add_description(f"random weights, scripts/tiny-gpt-oss.py v{SCRIPT_VERSION} seed {SEED}")
    # TextModel.set_gguf_parameters, in its order.
    w.add_block_count(N_LAYER)
    w.add_context_length(MAX_POS)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(ROPE_SCALING["factor"])
    w.add_rope_scaling_orig_ctx_len(ROPE_SCALING["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_beta_fast(ROPE_SCALING["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(ROPE_SCALING["beta_slow"])
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    # GptOssModel.set_gguf_parameters.
    w.add_sliding_window(SLIDING_WINDOW)
    w.add_expert_feed_forward_length(N_FF)
    # _set_vocab_gpt2 + SpecialVocab.
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(tokens.index(BOS))
    w.add_eos_token_id(tokens.index(EOS))
    w.add_pad_token_id(tokens.index(PAD))
    w.add_chat_template(CHAT_TEMPLATE)
    for n in tensor_order():
        raw = W.get(n + "#mxfp4")
        if raw is not None:
            w.add_tensor(n, raw, raw_dtype=gguf.GGMLQuantizationType.MXFP4)
        else:
            w.add_tensor(n, W[n])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_mxfp4_against_gguf_package(W: dict[str, np.ndarray]) -> None:
    """Our nibble order and scale convention must be the gguf package's (bit-exact with ggml)."""
    from gguf import GGMLQuantizationType, quants

    for n in tensor_order():
        raw = W.get(n + "#mxfp4")
        if raw is not None:
            ref = quants.dequantize(raw, GGMLQuantizationType.MXFP4)
            if not np.array_equal(ref, W[n]):
                sys.exit(f"MXFP4 mismatch with the gguf package on {n}")


# ---------------------------------------------------------------------------------------------
# Independent float64 forward, from the GGUF's point of view


def yarn_inv_freq(yarn: bool = True) -> tuple[np.ndarray, float]:
    """YaRN (not truncated): blend of interpolated and extrapolated frequencies per dimension
    pair, with cos/sin scaled by 0.1 ln(factor) + 1. `yarn=False`: plain RoPE."""
    d, base = HEAD_DIM, ROPE_THETA
    if not yarn:
        return 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d), 1.0
    f, orig = ROPE_SCALING["factor"], ROPE_SCALING["original_max_position_embeddings"]
    pos_freqs = base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    extra, inter = 1.0 / pos_freqs, 1.0 / (f * pos_freqs)

    def corr_dim(rot):
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    lo = max(corr_dim(ROPE_SCALING["beta_fast"]), 0.0)
    hi = min(corr_dim(ROPE_SCALING["beta_slow"]), d - 1.0)
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    keep = 1.0 - ramp  # share of the extrapolated (original) frequency
    return inter * (1 - keep) + extra * keep, 0.1 * math.log(f) + 1.0


def q8_0(x: np.ndarray) -> np.ndarray:
    """Round trip through ggml's Q8_0 (blocks of 32, scale amax/127 stored as f16)."""
    b = x.reshape(-1, 32)
    d = (np.abs(b).max(1, keepdims=True) / 127).astype(np.float16).astype(np.float64)
    q = np.round(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
    return (q * d).reshape(x.shape)


def forward_numpy(W: dict[str, np.ndarray], ids: list[int], sinks: bool = True,
                  window: int | None = SLIDING_WINDOW, yarn: bool = True, clamp: bool = True,
                  q8: bool = False):
    """Logits [T, V] in float64, plus statistics of the routing and the clamp. The keyword
    arguments switch features off, to measure how much the reference depends on each; `q8`
    instead simulates a quantized backend: 8-bit (Q8_0) activations into every matrix product
    and an f16 KV cache, the noise a correct implementation may show."""
    a8 = q8_0 if q8 else (lambda v: v)
    g = {k: v.astype(np.float64) for k, v in W.items() if "#" not in k}
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    inv_freq, mscale = yarn_inv_freq(yarn)
    ang = pos[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang) * mscale, np.sin(ang) * mscale

    def rope(x):  # [T, heads, D], NEOX halves
        a, b = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2 :]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + RMS_EPS) * w

    x = g["token_embd.weight"][ids]
    qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
    router_margin = np.full(T, np.inf)
    usage = np.zeros((N_LAYER, N_EXPERT), np.int64)
    clamped, gated = 0, 0
    for il in range(N_LAYER):
        p = f"blk.{il}."
        h = norm(x, g[p + "attn_norm.weight"])
        h = a8(h)
        q = (h @ g[p + "attn_q.weight"].T + g[p + "attn_q.bias"]).reshape(T, N_HEAD, HEAD_DIM)
        k = (h @ g[p + "attn_k.weight"].T + g[p + "attn_k.bias"]).reshape(T, N_HEAD_KV, HEAD_DIM)
        v = (h @ g[p + "attn_v.weight"].T + g[p + "attn_v.bias"]).reshape(T, N_HEAD_KV, HEAD_DIM)
        q, k = rope(q), rope(k)
        if q8:
            k, v = (z.astype(np.float16).astype(np.float64) for z in (k, v))
        allowed = ki <= qi
        if il % 2 == 0 and window:  # sliding layers: the last SLIDING_WINDOW positions, itself included
            allowed &= (qi - ki) < window
        out = np.empty((T, N_HEAD, HEAD_DIM))
        for hh in range(N_HEAD):
            kv = hh // (N_HEAD // N_HEAD_KV)
            s = (q[:, hh] @ k[:, kv].T) / math.sqrt(HEAD_DIM)
            s = np.where(allowed, s, -np.inf)
            sink = g[p + "attn_sinks.weight"][hh] if sinks else -np.inf
            m = np.maximum(s.max(-1, keepdims=True), sink)
            e = np.exp(s - m)
            den = e.sum(-1, keepdims=True) + np.exp(sink - m)
            out[:, hh] = (e / den) @ v[:, kv]
        x = x + a8(out.reshape(T, -1)) @ g[p + "attn_output.weight"].T + g[p + "attn_output.bias"]
        h = a8(norm(x, g[p + "post_attention_norm.weight"]))
        logits = h @ g[p + "ffn_gate_inp.weight"].T + g[p + "ffn_gate_inp.bias"]
        order = np.argsort(-logits, axis=-1, kind="stable")
        top = order[:, :N_EXPERT_USED]
        srt = np.take_along_axis(logits, order, -1)
        router_margin = np.minimum(router_margin, srt[:, N_EXPERT_USED - 1] - srt[:, N_EXPERT_USED])
        tl = np.take_along_axis(logits, top, -1)
        wts = np.exp(tl - tl.max(-1, keepdims=True))
        wts /= wts.sum(-1, keepdims=True)
        y = np.zeros_like(x)
        for t in range(T):
            for j, ex in enumerate(top[t]):
                usage[il, ex] += 1
                gate = g[p + "ffn_gate_exps.weight"][ex] @ h[t] + g[p + "ffn_gate_exps.bias"][ex]
                up = g[p + "ffn_up_exps.weight"][ex] @ h[t] + g[p + "ffn_up_exps.bias"][ex]
                clamped += int((gate > SWIGLU_LIMIT).sum() + (np.abs(up) > SWIGLU_LIMIT).sum())
                gated += 2 * N_FF
                if clamp:
                    gate = np.minimum(gate, SWIGLU_LIMIT)
                    up = np.clip(up, -SWIGLU_LIMIT, SWIGLU_LIMIT)
                act = (up + 1.0) * gate / (1.0 + np.exp(-SWIGLU_ALPHA * gate))
                y[t] += wts[t, j] * (
                    g[p + "ffn_down_exps.weight"][ex] @ a8(act) + g[p + "ffn_down_exps.bias"][ex]
                )
        x = x + y
    x = norm(x, g["output_norm.weight"])
    stats = {
        "router_margin_min": float(router_margin.min()),
        "router_margin_by_position": router_margin,
        "expert_usage": usage.tolist(),
        "clamped_fraction": clamped / gated,
    }
    return a8(x) @ g["output.weight"].T, stats


# ---------------------------------------------------------------------------------------------
# transformers


def hf_state_dict(W: dict[str, np.ndarray]):
    """GGUF tensors -> GptOssForCausalLM's parameters (the inverse of convert_hf_to_gguf)."""
    import torch

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    sd = {
        "model.embed_tokens.weight": t(W["token_embd.weight"]),
        "model.norm.weight": t(W["output_norm.weight"]),
        "lm_head.weight": t(W["output.weight"]),
    }
    for i in range(N_LAYER):
        p, m = f"blk.{i}.", f"model.layers.{i}."
        sd[m + "input_layernorm.weight"] = t(W[p + "attn_norm.weight"])
        sd[m + "post_attention_layernorm.weight"] = t(W[p + "post_attention_norm.weight"])
        for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")):
            sd[m + f"self_attn.{b}_proj.weight"] = t(W[p + f"attn_{a}.weight"])
            sd[m + f"self_attn.{b}_proj.bias"] = t(W[p + f"attn_{a}.bias"])
        sd[m + "self_attn.sinks"] = t(W[p + "attn_sinks.weight"])
        sd[m + "mlp.router.weight"] = t(W[p + "ffn_gate_inp.weight"])
        sd[m + "mlp.router.bias"] = t(W[p + "ffn_gate_inp.bias"])
        # HF: gate_up_proj [E, H, 2F] (x @ W), gate in the even columns, up in the odd ones.
        gate, up = W[p + "ffn_gate_exps.weight"], W[p + "ffn_up_exps.weight"]  # [E, F, H]
        gu = np.empty((N_EXPERT, N_EMBD, 2 * N_FF), np.float32)
        gu[:, :, 0::2] = gate.transpose(0, 2, 1)
        gu[:, :, 1::2] = up.transpose(0, 2, 1)
        gub = np.empty((N_EXPERT, 2 * N_FF), np.float32)
        gub[:, 0::2] = W[p + "ffn_gate_exps.bias"]
        gub[:, 1::2] = W[p + "ffn_up_exps.bias"]
        sd[m + "mlp.experts.gate_up_proj"] = t(gu)
        sd[m + "mlp.experts.gate_up_proj_bias"] = t(gub)
        # HF: down_proj [E, F, H] (x @ W); GGUF: [E, H, F] (rows are outputs).
        sd[m + "mlp.experts.down_proj"] = t(W[p + "ffn_down_exps.weight"].transpose(0, 2, 1))
        sd[m + "mlp.experts.down_proj_bias"] = t(W[p + "ffn_down_exps.bias"])
    return sd


def hf_model(W, tokens):
    import torch
    import transformers
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(
        num_hidden_layers=N_LAYER,
        num_local_experts=N_EXPERT,
        num_experts_per_tok=N_EXPERT_USED,
        vocab_size=VOCAB,
        hidden_size=N_EMBD,
        intermediate_size=N_FF,
        head_dim=HEAD_DIM,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_HEAD_KV,
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=MAX_POS,
        rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_theta": ROPE_THETA, **ROPE_SCALING},
        swiglu_limit=SWIGLU_LIMIT,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(N_LAYER)],
        attention_bias=True,
        tie_word_embeddings=False,
        bos_token_id=tokens.index(BOS),
        eos_token_id=tokens.index(EOS),
        pad_token_id=tokens.index(PAD),
    )
    cfg._attn_implementation = "eager"
    if hasattr(cfg, "_experts_implementation"):
        cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    model = GptOssForCausalLM(cfg).to(torch.float32).eval()
    sd = hf_state_dict(W)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    for name, prm in model.state_dict().items():  # loaded exactly
        if name in sd and not torch.equal(prm, sd[name]):
            sys.exit(f"{name} was not loaded exactly")
    return model, cfg, transformers.__version__, torch.__version__


def reference_text() -> str:
    """A harmony conversation; its first SEQ_LEN tokens are the reference sequence."""
    text = TRAIN_TEXT.read_text()
    a, b = text[20000:20900], text[30000:30700]
    return (
        "<|start|>system<|message|>You are a tiny test model.<|end|>"
        f"<|start|>user<|message|>Continue this scene:\n{a}<|end|>"
        f"<|start|>assistant<|channel|>analysis<|message|>{b}"
    )


def reference_sequence(tok: Tokenizer) -> list[int]:
    ids = tok.encode(reference_text())
    assert len(ids) >= SEQ_LEN, len(ids)
    return ids[:SEQ_LEN]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf-only", action="store_true", help="write the GGUF only (numpy + gguf)")
    ap.add_argument("--out", type=Path, default=None, help="directory of tiny-gpt-oss.gguf")
    ap.add_argument("--no-check", action="store_true",
                    help="do not compare the weights with the committed reference")
    a = ap.parse_args()

    vocab = build_vocab()
    tokens, _, merges, text_sha = vocab
    W = make_weights()
    check_mxfp4_against_gguf_package(W)
    digest = weights_digest(W)
    ref_path = DATA_DIR / "reference.json"
    if a.gguf_only and not a.no_check and ref_path.exists():
        ref = json.loads(ref_path.read_text())
        if ref["weights_sha256"] != digest or ref["train_text_sha256"] != text_sha:
            sys.exit("the weights or the tokenizer text differ from those of "
                     f"{ref_path} (weights {digest}): regenerate the reference")
    out_dir = a.out or ROOT / "target" / "tiny-gpt-oss"  # never committed
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = out_dir / "tiny-gpt-oss.gguf"
    write_gguf(gguf_path, W, vocab)
    print(f"wrote {gguf_path} ({gguf_path.stat().st_size} bytes), weights sha256 {digest}")
    if a.gguf_only:
        return

    import torch

    tok = Tokenizer(tokens, merges)
    ids = reference_sequence(tok)
    model, cfg, tf_version, torch_version = hf_model(W, tokens)
    print(f"transformers {tf_version}, torch {torch_version}, "
          f"attention {cfg._attn_implementation}, "
          f"experts {getattr(cfg, '_experts_implementation', 'n/a')}")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    assert logits.shape == (SEQ_LEN, VOCAB)

    ref64, stats = forward_numpy(W, ids)
    diff = np.abs(ref64 - logits).max()
    scale = np.abs(ref64).max()
    print(f"numpy float64 vs transformers float32: max |d| {diff:.3e}, max |logit| {scale:.3f}, "
          f"top-1 agreement {np.mean(ref64.argmax(-1) == logits.argmax(-1)):.4f}")
    if diff > 1e-3 * scale:
        sys.exit("the independent forward disagrees with transformers: the GGUF does not hold "
                 "the weights transformers ran")

    # How much each gpt-oss feature moves the logits: an implementation that missed one would
    # be this far off.
    # And how far a correct backend with 8-bit activations and an f16 KV cache lands.
    ablations = {}
    for what, kw in (("q8_activations_f16_kv", {"q8": True}), ("no_sinks", {"sinks": False}),
                     ("no_sliding_window", {"window": None}), ("window_127", {"window": 127}),
                     ("window_129", {"window": 129}), ("plain_rope", {"yarn": False}),
                     ("no_swiglu_clamp", {"clamp": False})):
        alt, _ = forward_numpy(W, ids, **kw)
        d = np.abs(alt - ref64)
        ablations[what] = {
            "max_abs": round(float(d.max()), 4),
            "mean_abs": round(float(d.mean()), 5),
            "top1": round(float(np.mean(alt.argmax(-1) == ref64.argmax(-1))), 4),
        }
        print(f"{what}: {ablations[what]}")

    # Greedy continuation: full forwards, argmax (lowest id on ties), as transformers' argmax.
    prompt = tok.encode(GREEDY_PROMPT)
    seq, margins = list(prompt), []
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):
            row = model(torch.tensor([seq])).logits[0, -1].float().numpy()
            top2 = np.sort(row)[-2:]
            margins.append(float(top2[1] - top2[0]))
            seq.append(int(row.argmax()))
    greedy = seq[len(prompt):]

    srt = np.sort(logits, axis=-1)
    top_margin = srt[:, -1] - srt[:, -2]
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.save(DATA_DIR / "logits.npy", logits.astype("<f4"))
    ref = {
        "about": "transformers GptOssForCausalLM logits of the tiny random gpt-oss built by "
                 "scripts/tiny-gpt-oss.py; regenerate with `python3 scripts/tiny-gpt-oss.py`",
        "script_version": SCRIPT_VERSION,
        "seed": SEED,
        "weights_sha256": digest,
        "train_text_sha256": text_sha,
        "transformers": tf_version,
        "torch": torch_version,
        "dtype": "float32",
        "attn_implementation": "eager",
        "config": {
            "n_layer": N_LAYER, "n_embd": N_EMBD, "n_head": N_HEAD, "n_head_kv": N_HEAD_KV,
            "head_dim": HEAD_DIM, "n_ff": N_FF, "n_expert": N_EXPERT,
            "n_expert_used": N_EXPERT_USED, "sliding_window": SLIDING_WINDOW,
            "layer_types": cfg.layer_types, "rope_theta": ROPE_THETA,
            "rope_scaling": ROPE_SCALING, "max_position_embeddings": MAX_POS,
            "rms_norm_eps": RMS_EPS, "swiglu_limit": SWIGLU_LIMIT, "swiglu_alpha": SWIGLU_ALPHA,
            "vocab": VOCAB, "tokenizer_pre": PRE,
        },
        "logits_file": "logits.npy",
        "logits_shape": [SEQ_LEN, VOCAB],
        "text": reference_text(),
        "tokens": ids,
        "max_abs_logit": float(np.abs(logits).max()),
        "top1_margin_min": float(top_margin.min()),
        "top1_margin_by_position": [round(float(m), 6) for m in top_margin],
        "router_margin_min": stats["router_margin_min"],
        "router_margin_by_position": [round(float(m), 6) for m in stats["router_margin_by_position"]],
        "expert_usage": stats["expert_usage"],
        "swiglu_clamped_fraction": stats["clamped_fraction"],
        "numpy_f64_vs_transformers_max_abs": float(diff),
        "variants_vs_reference": ablations,
        "greedy": {
            "prompt_text": GREEDY_PROMPT,
            "prompt": prompt,
            "tokens": greedy,
            "margins": [round(m, 6) for m in margins],
        },
    }
    (DATA_DIR / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {DATA_DIR / 'logits.npy'} and reference.json; router margin min "
          f"{stats['router_margin_min']:.2e}, clamped {stats['clamped_fraction']:.3%}, "
          f"expert usage {stats['expert_usage']}")


if __name__ == "__main__":
    main()
