#!/usr/bin/env python3
"""Dequantization test vectors for tests/test_dequant.c, from an independent
implementation: the Python `gguf` package (llama.cpp's own, on PyPI), its
gguf.quants.dequantize.

Blocks come from three places, and every record says which:
  file       the first blocks of the first tensor of each type present in the
             model (SmolLM2-135M-Instruct Q4_1: f32, q4_1, q8_0);
  quantized  real weights (the model's q8_0 token embedding, dequantized)
             re-quantized by gguf.quants.quantize, for the types it can
             quantize that the file lacks (f16, bf16, q4_0, q5_0, q5_1), plus
             special values (zeros, subnormals, infinities, NaN) for the
             element types;
  random     random bytes with finite random f16 scales (subnormal, negative
             and large ones included), for every block type: the only source
             for q4_K and q6_K, which the package cannot quantize; random
             bytes set every 6-bit scale/min and every high bit, so a wrong
             scale packing cannot pass.

Output (little-endian): "TDDQ", u32 version (1), u32 record count; per record
u32 ggml type, u32 source (0 file, 1 quantized, 2 random), char label[64]
(NUL-padded), u64 n elements, u64 n bytes, the bytes, n f32 expected values.
"""
import argparse
import os
import struct
import sys

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize
except ImportError as e:  # scripts/setup installs it
    sys.exit(f"dequant_vectors.py: {e} (run scripts/setup)")

SUPPORTED = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q6_K]
SOURCE_FILE, SOURCE_QUANTIZED, SOURCE_RANDOM = 0, 1, 2
FILE_BLOCKS = 512  # per type taken from the model: 16K elements of a 32-element type
RANDOM_BLOCKS = 256
# Byte offsets of the f16 scale fields in a block, per type.
SCALE_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2],  # d, dmin
    T.Q6_K: [208],   # d, after ql[128], qh[64], scales[16]
}
SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 65504.0, -65504.0, 6.1e-5, 6e-8, -3e-7,
                     1e-40, -1e-44, 3.4e38, 1.17549435e-38, 1.0 + 2**-8, 1.0 + 3 * 2**-9], dtype=np.float32)


def record(qtype, source, label, raw):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    assert raw.size % block_bytes == 0, (qtype.name, raw.size)
    n = raw.size // block_bytes * block_elems
    if qtype in (T.F32, T.F16):  # dequantize views these as the element type
        expected = dequantize(raw, qtype)
    else:
        expected = dequantize(raw.reshape(-1, block_bytes), qtype)
    expected = np.ascontiguousarray(expected, dtype=np.float32).reshape(-1)
    assert expected.size == n, (qtype.name, expected.size, n)
    name = label.encode()[:63].ljust(64, b"\0")
    return (struct.pack("<II", int(qtype), source) + name + struct.pack("<QQ", n, raw.size) + raw.tobytes() +
            expected.astype("<f4").tobytes())


def random_f16(rng, n):
    """Finite f16 values: random sign, magnitudes 2^-24 (subnormal) to 2^8."""
    mag = np.exp2(rng.uniform(-24.0, 8.0, n)).astype(np.float32)
    v = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)
    assert np.all(np.isfinite(v))
    return v


def random_blocks(rng, qtype, n_blocks):
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        raw[:, off:off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file (scripts/fetch-model prints the default one's path)")
    ap.add_argument("--out", required=True, help="fixture file to write")
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.model)
    rng = np.random.default_rng(20240603)
    records, summary = [], []

    def add(qtype, source, label, raw):
        records.append(record(qtype, source, label, raw))
        summary.append(f"  {qtype.name:5} {['file', 'quantized', 'random'][source]:9} {label}")

    # 1. real blocks, from the first tensor of each supported type in the file
    seen = set()
    for t in reader.tensors:
        qtype = T(t.tensor_type)
        if qtype not in SUPPORTED or qtype in seen:
            continue
        seen.add(qtype)
        _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)[:FILE_BLOCKS * block_bytes]
        unit = "blocks" if gguf.GGML_QUANT_SIZES[qtype][0] > 1 else "elements"
        add(qtype, SOURCE_FILE, f"{t.name} (first {raw.size // block_bytes} {unit})", raw)

    # 2. real weights, re-quantized: the first rows of the q8_0 (else any
    # quantized) embedding, as f32
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        sys.exit(f"dequant_vectors.py: {args.model} has no token_embd.weight")
    weights = dequantize(np.asarray(emb.data)[:32], T(emb.tensor_type)).reshape(-1)[:FILE_BLOCKS * 32]
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    for qtype in (T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        if qtype in seen:
            continue
        add(qtype, SOURCE_QUANTIZED, f"{emb.name} rows 0-31 quantized by gguf", quantize(weights, qtype).view(np.uint8))
    for qtype in (T.F32, T.F16, T.BF16):
        with np.errstate(over="ignore"):
            add(qtype, SOURCE_QUANTIZED, "special values", quantize(SPECIALS, qtype).view(np.uint8))

    # 3. random bytes with finite scales, every block type
    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q6_K):
        add(qtype, SOURCE_RANDOM, f"random bytes, {RANDOM_BLOCKS} blocks", random_blocks(rng, qtype, RANDOM_BLOCKS))
    for qtype, bits, exp_mask in ((T.F32, np.uint32, 0x7f800000), (T.F16, np.uint16, 0x7c00),
                                  (T.BF16, np.uint16, 0x7f80)):
        # every bit pattern but infinities and NaNs (NaN payloads numpy may
        # not keep; the special values have both)
        h = rng.integers(0, np.iinfo(bits).max, size=4096, dtype=bits, endpoint=True)
        h = h[(h & exp_mask) != exp_mask].astype(np.dtype(bits).newbyteorder("<"))
        add(qtype, SOURCE_RANDOM, "random finite bit patterns", h.view(np.uint8))

    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"TDDQ" + struct.pack("<II", 1, len(records)))
        for r in records:
            f.write(r)
    os.replace(tmp, args.out)
    print(f"dequant_vectors.py: {len(records)} records from {os.path.basename(args.model)} -> {args.out}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
