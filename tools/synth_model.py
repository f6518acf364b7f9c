#!/usr/bin/env python3
"""Writes a Llama-shaped GGUF with random weights: a model of any size for benchmarks that need one
larger than the default (e.g. a KV cache that outgrows a modelled GPU), without downloading it.

    tools/synth_model.py --shape llama3-8b --out models/synth-llama3-8b.gguf
    tools/synth_model.py --layers 4 --embd 1024 --heads 16 --kv-heads 4 --ff 4096 --out small.gguf

Linear layers and the token embedding are Q4_0 (random 4-bit values, a small fixed scale, so that
activations stay finite through the layers); norms are fp32 ones. The tokenizer (and so the vocabulary
size) is copied from --tokenizer-from, by default the fetched SmolLM2 model, so that the file opens in
the engine and the CLI like any other. The text it generates is noise: the point is its shapes.
Written with the `gguf` package (scripts/setup pins it).
"""
import argparse
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("synth_model: needs the gguf package (scripts/setup installs it)")

SHAPES = {  # layers, embd, heads, kv heads, ff, context
    "llama3-1b": (16, 2048, 32, 8, 8192, 8192),
    "llama3-3b": (28, 3072, 24, 8, 8192, 8192),
    "llama3-8b": (32, 4096, 32, 8, 14336, 8192),
}
Q4_0 = gguf.GGMLQuantizationType.Q4_0
BLOCK, BLOCK_BYTES = 32, 18  # Q4_0: 32 weights in an f16 scale + 16 bytes of nibbles


def q4_0_rows(rng, rows, cols, scale):
    """rows x cols random Q4_0 weights as raw bytes [rows][cols / 32 * 18]."""
    if cols % BLOCK:
        sys.exit(f"synth_model: a row of {cols} values is not a whole number of Q4_0 blocks")
    nb = cols // BLOCK
    out = np.empty((rows, nb, BLOCK_BYTES), dtype=np.uint8)
    out[:, :, :2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
    out[:, :, 2:] = rng.integers(0, 256, size=(rows, nb, 16), dtype=np.uint8)
    return out.reshape(rows, nb * BLOCK_BYTES)


def copy_tokenizer(writer, path):
    """Copies the tokenizer.* keys of the GGUF at path; returns its vocabulary size."""
    r = gguf.GGUFReader(path)
    n_vocab = None
    for name, field in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                vals = [field.parts[i][0].item() for i in field.data]
            writer.add_array(name, vals)
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(vals)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            writer.add_key_value(name, field.parts[field.data[0]][0].item(), vtype)
    if n_vocab is None:
        sys.exit(f"synth_model: {path} has no tokenizer.ggml.tokens")
    return n_vocab


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), help="a preset shape (the options below override it)")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--embd", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--ff", type=int)
    ap.add_argument("--ctx", type=int)
    ap.add_argument("--tokenizer-from", default=os.path.join(os.path.dirname(__file__), "..", "models",
                                                             "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    layers, embd, heads, kv_heads, ff, ctx = SHAPES[a.shape] if a.shape else (None,) * 6
    layers, embd, heads = a.layers or layers, a.embd or embd, a.heads or heads
    kv_heads, ff, ctx = a.kv_heads or kv_heads, a.ff or ff, a.ctx or ctx or 4096
    if None in (layers, embd, heads, kv_heads, ff):
        ap.error("give --shape or all of --layers --embd --heads --kv-heads --ff")
    if embd % heads or heads % kv_heads or (embd // heads) % 16:
        ap.error(f"embd {embd} / heads {heads} / kv heads {kv_heads}: the head dim must be a multiple of 16 "
                 "and the heads a multiple of the kv heads")
    if not os.path.exists(a.tokenizer_from):
        sys.exit(f"synth_model: no tokenizer source {a.tokenizer_from} (run scripts/fetch-model, or pass "
                 "--tokenizer-from)")
    head_dim = embd // heads
    rng = np.random.default_rng(a.seed)
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"synthetic llama {layers}x{embd}")
    w.add_context_length(ctx)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    n_vocab = copy_tokenizer(w, a.tokenizer_from)
    w.add_vocab_size(n_vocab)
    # a scale that keeps a random row's dot product near 1: 1 / (7.5 * sqrt(k)) per weight unit
    scale = lambda k: 1.0 / (7.5 * np.sqrt(k))  # noqa: E731
    ones = np.ones(embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", q4_0_rows(rng, n_vocab, embd, 0.02), raw_dtype=Q4_0)
    for l in range(layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", q4_0_rows(rng, embd, embd, scale(embd)), raw_dtype=Q4_0)
        w.add_tensor(p + "attn_k.weight", q4_0_rows(rng, kv_heads * head_dim, embd, scale(embd)), raw_dtype=Q4_0)
        w.add_tensor(p + "attn_v.weight", q4_0_rows(rng, kv_heads * head_dim, embd, scale(embd)), raw_dtype=Q4_0)
        w.add_tensor(p + "attn_output.weight", q4_0_rows(rng, embd, embd, scale(embd)), raw_dtype=Q4_0)
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", q4_0_rows(rng, ff, embd, scale(embd)), raw_dtype=Q4_0)
        w.add_tensor(p + "ffn_up.weight", q4_0_rows(rng, ff, embd, scale(embd)), raw_dtype=Q4_0)
        w.add_tensor(p + "ffn_down.weight", q4_0_rows(rng, embd, ff, scale(ff)), raw_dtype=Q4_0)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", q4_0_rows(rng, n_vocab, embd, scale(embd)), raw_dtype=Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=sys.stderr.isatty())
    w.close()
    params = n_vocab * embd * 2 + layers * (embd * embd * 2 + 2 * kv_heads * head_dim * embd + 3 * embd * ff)
    print(f"{a.out}: {layers} layers, embd {embd}, {heads}/{kv_heads} heads of {head_dim}, ff {ff}, "
          f"vocab {n_vocab}, ctx {ctx}: {params / 1e9:.2f}B parameters, {os.path.getsize(a.out) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
