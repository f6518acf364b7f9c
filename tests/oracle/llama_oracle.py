#!/usr/bin/env python3
"""Independent fp32 reference of the Llama forward pass, in numpy: the oracle
for the C engine's forward pass.

Independence: nothing here comes from the C code. The GGUF is read with the
Python `gguf` package (llama.cpp's own, on PyPI) and every weight is
dequantized with gguf.quants.dequantize; the forward pass is written from the
published Llama definition:

  x = token_embd[ids]
  per layer:  h = x + Wo . attn(RoPE(Wq . rms(x)), RoPE(Wk . rms(x)), Wv . rms(x))
              x = h + Wdown . (silu(Wgate . rms(h)) * Wup . rms(h))
  logits = Wout . rms(x)          (Wout = output.weight, or token_embd.weight if tied)

  rms(x) = x / sqrt(mean(x^2) + eps) * w, eps = llama.attention.layer_norm_rms_epsilon;
  causal softmax attention, scale 1/sqrt(head_dim), grouped-query: query head h
  reads kv head h // (n_head / n_head_kv).

RoPE: llama.cpp's converter permutes the Q and K rows of HF checkpoints so that
ggml's "normal" RoPE is right on the stored weights: the rotation acts on
ADJACENT pairs (x[2i], x[2i+1]) of each head (GPT-J style, ggml mode 0) with
angle pos * base^(-2i/n_rot) for i < n_rot/2; dims past n_rot pass through.
Optional scaling: llama.rope.scaling.type == "linear" multiplies positions by
1/llama.rope.scaling.factor; a rope_freqs.weight tensor divides each angle by
its per-pair factor (as ggml does). SmolLM2 has neither.

Precision: weights are the exact fp32 values gguf's dequantizer produces; all
activations are stored as float32 between operations; every matmul, the
attention scores/softmax/weighted sum, RMSNorm's sum of squares and SwiGLU are
computed in float64 and rounded to float32 once. So the recorded logits are
the fp32-rounded values of a (nearly) exact evaluation of the dequantized
model; an fp32-accumulating engine should differ from them only by its own
rounding error.

Generation: per prompt, one prefill pass over the prompt, then greedy decoding
with a KV cache (argmax; ties go to the lowest id; EOS does not stop it:
exactly --gen tokens). All prompts decode in lockstep so each weight matrix is
read once per step for the whole batch. The logits rows recorded are exactly
the ones the argmax was taken on, so ids[t+1] == argmax(logits[t]) for every
generated position t.

Cost: SmolLM2-135M, tests/oracle/prompts.json (8 prompts of 2-57 tokens),
--gen 32: about 13 s on one core with OPENBLAS_NUM_THREADS=1 (load and
dequantize ~5 s, forward ~8 s); peak RSS ~1.7 GB (weights kept in float64).
Output ~99 MB.

Usage:
  llama_oracle.py --model M.gguf --prompts P.json --gen 32 --out FILE.bin
  llama_oracle.py --model M.gguf --prompts P.json --retokenize OUT.json
P.json: a JSON list of objects {"text": str, "ids": [int, ...]}; other keys are
ignored. --retokenize rewrites "ids" from "text" with a Hugging Face
`tokenizers` tokenizer built from the GGUF's own vocabulary and merges (needs
the `tokenizers` package; only this mode does).

Output (little-endian): b"TDOR", u32 version (1), u32 n_prompts, u32 n_vocab,
u32 gen; then per prompt u32 n_prompt, i32 ids[n_prompt + gen] (prompt, then
generated), f32 logits[(n_prompt + gen) * n_vocab], row t = the logits at
position t (predicting token t+1). A summary goes to stderr: the decoded
continuation, the minimum top-two logit gap over generated positions, max|logit|.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

try:
    import gguf
    from gguf.quants import dequantize
except ImportError as e:  # scripts/setup installs it
    sys.exit(f"llama_oracle.py: {e} (run scripts/setup)")

F32, F64 = np.float32, np.float64
MAGIC, VERSION = b"TDOR", 1


def die(msg):
    sys.exit(f"llama_oracle.py: {msg}")


# ---------------------------------------------------------------- model ----

class Model:
    def __init__(self, path):
        if not os.path.isfile(path):
            die(f"model file not found: {path} (run scripts/fetch-model)")
        try:
            self.reader = r = gguf.GGUFReader(path)
        except Exception as e:
            die(f"cannot read GGUF {path}: {e}")
        arch = self.kv("general.architecture")
        if arch != "llama":
            die(f"{path}: architecture {arch!r}, expected 'llama'")
        self.n_layer = int(self.kv("llama.block_count"))
        self.n_embd = int(self.kv("llama.embedding_length"))
        self.n_head = int(self.kv("llama.attention.head_count"))
        self.n_head_kv = int(self.kv("llama.attention.head_count_kv", self.n_head))
        self.head_dim = int(self.kv("llama.attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(self.kv("llama.rope.dimension_count", self.head_dim))
        self.rope_base = float(self.kv("llama.rope.freq_base", 10000.0))
        self.eps = float(self.kv("llama.attention.layer_norm_rms_epsilon"))
        self.pos_scale = 1.0
        scaling = self.kv("llama.rope.scaling.type", "none")
        if scaling == "linear":
            self.pos_scale = 1.0 / float(self.kv("llama.rope.scaling.factor"))
        elif scaling not in ("none", None):
            die(f"unsupported rope scaling type {scaling!r}")
        if self.n_head % self.n_head_kv or self.n_rot % 2 or self.n_rot > self.head_dim:
            die("inconsistent head counts / rope dimension")
        self.tokens = self.kv("tokenizer.ggml.tokens", None)

        self.tensors = {t.name: t for t in r.tensors}
        self.embd = self.weight("token_embd.weight", F32)  # (n_vocab, n_embd): rows are looked up
        self.n_vocab = self.embd.shape[0]
        self.layers = []
        for i in range(self.n_layer):
            w = lambda n, dt=F64: self.weight(f"blk.{i}.{n}.weight", dt)
            self.layers.append(dict(
                attn_norm=w("attn_norm"), q=w("attn_q"), k=w("attn_k"), v=w("attn_v"), o=w("attn_output"),
                ffn_norm=w("ffn_norm"), gate=w("ffn_gate"), up=w("ffn_up"), down=w("ffn_down")))
        self.out_norm = self.weight("output_norm.weight", F64)
        if "output.weight" in self.tensors:
            self.lm_head = self.weight("output.weight", F64)
            self.tied = False
        else:
            self.lm_head = self.embd.astype(F64)
            self.tied = True
        # Per-pair inverse frequencies (float64), angle = pos * inv_freq[i].
        i = np.arange(self.n_rot // 2, dtype=F64)
        self.inv_freq = self.rope_base ** (-2.0 * i / self.n_rot)
        if "rope_freqs.weight" in self.tensors:
            self.inv_freq = self.inv_freq / self.weight("rope_freqs.weight", F64)[: self.n_rot // 2]
        # Shape checks against the hyperparameters.
        qd, kvd = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        L = self.layers[0]
        for name, a, shape in [("attn_q", L["q"], (qd, self.n_embd)), ("attn_k", L["k"], (kvd, self.n_embd)),
                               ("attn_v", L["v"], (kvd, self.n_embd)), ("attn_output", L["o"], (self.n_embd, qd)),
                               ("lm_head", self.lm_head, (self.n_vocab, self.n_embd))]:
            if a.shape != shape:
                die(f"{name}: shape {a.shape}, expected {shape}")

    def kv(self, key, default=KeyError):
        f = self.reader.fields.get(key)
        if f is None:
            if default is KeyError:
                die(f"GGUF key {key} missing")
            return default
        return f.contents()

    def weight(self, name, dtype):
        t = self.tensors.get(name)
        if t is None:
            die(f"tensor {name} missing")
        a = dequantize(t.data, t.tensor_type)  # gguf's dequantizer; F32/F16 pass through as values
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml ne[0] is the contiguous (last numpy) axis
        return np.ascontiguousarray(np.asarray(a, dtype=F32).reshape(shape)).astype(dtype)


# -------------------------------------------------------------- forward ----

def mm(x, w):
    """x (T, in) float32, w (out, in) float64 -> (T, out) float32, float64 accumulation."""
    return (x.astype(F64) @ w.T).astype(F32)


def rmsnorm(x, w, eps):
    x64 = x.astype(F64)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w).astype(F32)


def rope(x, pos, m):
    """x (T, heads, head_dim) float32, pos (T,) absolute positions; adjacent-pair rotation."""
    ang = (pos.astype(F64) * m.pos_scale)[:, None] * m.inv_freq[None, :]  # (T, n_rot/2)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = x.astype(F64)
    x0, x1 = y[..., 0:m.n_rot:2].copy(), y[..., 1:m.n_rot:2].copy()
    y[..., 0:m.n_rot:2] = x0 * c - x1 * s
    y[..., 1:m.n_rot:2] = x0 * s + x1 * c
    return y.astype(F32)


class Seq:
    """One sequence's KV cache: per layer float32 (n_past, n_head_kv, head_dim)."""

    def __init__(self, m):
        self.k = [np.zeros((0, m.n_head_kv, m.head_dim), F32) for _ in range(m.n_layer)]
        self.v = [np.zeros((0, m.n_head_kv, m.head_dim), F32) for _ in range(m.n_layer)]
        self.n_past = 0


def attention(q, k, v, pos_q, m):
    """q (T, H, D), k/v (S, KV, D) float32 with key positions 0..S-1; causal GQA. -> (T, H*D) float32."""
    T, S, group = q.shape[0], k.shape[0], m.n_head // m.n_head_kv
    qh = q.astype(F64).transpose(1, 0, 2)                                      # (H, T, D)
    kh = np.repeat(k.astype(F64).transpose(1, 0, 2), group, axis=0)           # (H, S, D): head h -> kv h//group
    vh = np.repeat(v.astype(F64).transpose(1, 0, 2), group, axis=0)
    scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(m.head_dim)                # (H, T, S)
    mask = np.arange(S)[None, :] > pos_q[:, None]                             # (T, S): key after query
    scores = np.where(mask[None], -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = p @ vh                                                              # (H, T, D)
    return out.transpose(1, 0, 2).reshape(T, m.n_head * m.head_dim).astype(F32)


def forward(m, seqs, chunks):
    """Append chunks[i] (token ids) to seqs[i]; returns the logits (sum T_i, n_vocab) float32,
    rows in order of the sequences, then positions."""
    ids = np.concatenate([np.asarray(c, dtype=np.int64) for c in chunks])
    spans, o = [], 0
    for s, c in zip(seqs, chunks):
        spans.append((o, o + len(c), np.arange(s.n_past, s.n_past + len(c))))
        o += len(c)
    H, KV, D = m.n_head, m.n_head_kv, m.head_dim
    x = m.embd[ids]                                                           # (N, n_embd) float32
    for li, L in enumerate(m.layers):
        h = rmsnorm(x, L["attn_norm"], m.eps)
        q = mm(h, L["q"]).reshape(-1, H, D)
        k = mm(h, L["k"]).reshape(-1, KV, D)
        v = mm(h, L["v"]).reshape(-1, KV, D)
        att = np.empty((x.shape[0], H * D), F32)
        for s, (a, b, pos) in zip(seqs, spans):
            s.k[li] = np.concatenate([s.k[li], rope(k[a:b], pos, m)])
            s.v[li] = np.concatenate([s.v[li], v[a:b]])
            att[a:b] = attention(rope(q[a:b], pos, m), s.k[li], s.v[li], pos, m)
        x = (x.astype(F64) + mm(att, L["o"])).astype(F32)
        h = rmsnorm(x, L["ffn_norm"], m.eps)
        g = mm(h, L["gate"]).astype(F64)
        u = mm(h, L["up"]).astype(F64)
        act = (g / (1.0 + np.exp(-g)) * u).astype(F32)
        x = (x.astype(F64) + mm(act, L["down"])).astype(F32)
    for s, c in zip(seqs, chunks):
        s.n_past += len(c)
    return mm(rmsnorm(x, m.out_norm, m.eps), m.lm_head)


def run(m, prompts, gen):
    """Greedy generation; returns per prompt (ids int64 array, logits (n, n_vocab) float32)."""
    seqs = [Seq(m) for _ in prompts]
    rows = [[forward(m, [s], [p])] for s, p in zip(seqs, prompts)]           # prefill, one prompt at a time
    ids = [list(p) for p in prompts]
    for _ in range(gen):
        nxt = [int(np.argmax(r[-1][-1])) for r in rows]                        # first max: lowest id on ties
        for i, t in enumerate(nxt):
            ids[i].append(t)
        out = forward(m, seqs, [[t] for t in nxt])                           # lockstep decode, one row each
        for i in range(len(prompts)):
            rows[i].append(out[i:i + 1])
    return [(np.array(i, np.int64), np.concatenate(r)) for i, r in zip(ids, rows)]


# ------------------------------------------------------------ tokenizer ----

def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def detokenize(m, ids):
    if m.tokens is None:
        return None
    dec, out = byte_decoder(), bytearray()
    for t in ids:
        s = m.tokens[t]
        if s.startswith("<") and s.endswith(">") and any(ch not in dec for ch in s):
            out += s.encode()
        else:
            out += bytes(dec[ch] if ch in dec else ord("?") for ch in s)
    return out.decode("utf-8", errors="replace")


def hf_tokenizer(m):
    """A Hugging Face tokenizer from the GGUF's vocabulary and merges (gpt2 byte-level BPE; the
    'smollm' pre-tokenizer = single digits, then the GPT-2 regex; control tokens are special)."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ImportError as e:
        die(f"--retokenize needs the `tokenizers` package: {e}")
    if m.kv("tokenizer.ggml.model") != "gpt2" or m.kv("tokenizer.ggml.pre", "") not in ("smollm", "starcoder"):
        die("--retokenize only knows the gpt2/smollm tokenizer")
    vocab = {s: i for i, s in enumerate(m.tokens)}
    merges = [tuple(x.split(" ", 1)) for x in m.kv("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    types = m.kv("tokenizer.ggml.token_type")
    tok.add_special_tokens([AddedToken(m.tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])  # 3: CONTROL
    return tok


# ------------------------------------------------------------------ main ----

def load_prompts(path, need_ids):
    if not os.path.isfile(path):
        die(f"prompts file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        die(f"bad prompts JSON {path}: {e}")
    if not isinstance(data, list) or not data:
        die(f"{path}: expected a non-empty JSON list of {{\"text\", \"ids\"}} objects")
    for i, p in enumerate(data):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            die(f"{path}: entry {i} is not an object with a string \"text\"")
        ids = p.get("ids")
        if need_ids and (not isinstance(ids, list) or not ids or
                         not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)):
            die(f"{path}: entry {i}: \"ids\" must be a non-empty list of non-negative token ids")
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--out", help="binary output (TDOR)")
    ap.add_argument("--retokenize", metavar="OUT_JSON", help="write the prompts with ids from their text, and stop")
    a = ap.parse_args()
    if a.gen < 0:
        die("--gen must be >= 0")
    if not a.out and not a.retokenize:
        die("one of --out or --retokenize is needed")
    t0 = time.time()

    if a.retokenize:
        if not os.path.isfile(a.model):
            die(f"model file not found: {a.model}")
        data = load_prompts(a.prompts, False)

        class Vocab(Model):  # the tokenizer needs the vocabulary only, not the weights
            def __init__(self, path):
                self.reader = gguf.GGUFReader(path)
                self.tokens = self.kv("tokenizer.ggml.tokens")
        m = Vocab(a.model)
        tok = hf_tokenizer(m)
        for p in data:
            p["ids"] = tok.encode(p["text"], add_special_tokens=False).ids
            if detokenize(m, p["ids"]) != p["text"]:
                die(f"tokenizer round trip failed for {p['text']!r}")
        with open(a.retokenize, "w", encoding="utf-8") as f:  # one prompt a line
            f.write("[\n" + ",\n".join(" " + json.dumps(p, ensure_ascii=False) for p in data) + "\n]\n")
        print(f"wrote {a.retokenize}: {[len(p['ids']) for p in data]} tokens", file=sys.stderr)
        return

    data = load_prompts(a.prompts, True)
    m = Model(a.model)
    for i, p in enumerate(data):
        if max(p["ids"]) >= m.n_vocab:
            die(f"{a.prompts}: entry {i}: token id {max(p['ids'])} >= n_vocab {m.n_vocab}")
    t1 = time.time()
    results = run(m, [p["ids"] for p in data], a.gen)
    t2 = time.time()

    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<IIII", VERSION, len(data), m.n_vocab, a.gen))
        for p, (ids, logits) in zip(data, results):
            assert ids.shape == (len(p["ids"]) + a.gen,) and logits.shape == (ids.size, m.n_vocab)
            f.write(struct.pack("<I", len(p["ids"])))
            f.write(ids.astype("<i4").tobytes())
            f.write(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    os.replace(tmp, a.out)

    print(f"llama_oracle: {len(data)} prompts, gen {a.gen}, n_vocab {m.n_vocab}, "
          f"load {t1 - t0:.1f}s, forward {t2 - t1:.1f}s -> {a.out}", file=sys.stderr)
    for i, (p, (ids, logits)) in enumerate(zip(data, results)):
        n = len(p["ids"])
        top2 = np.sort(logits[n - 1:n - 1 + a.gen], axis=1)[:, -2:] if a.gen else np.zeros((1, 2))
        gap = float(np.min(top2[:, 1] - top2[:, 0]))
        cont = detokenize(m, ids[n:])
        print(f"[{i}] n_prompt {n:3d}  min top-2 gap {gap:.4f}  max|logit| {float(np.abs(logits).max()):.2f}  "
              f"continuation: {cont!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
