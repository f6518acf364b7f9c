#!/usr/bin/env python3
"""Throughput of the whole CLI path against the engine's own benchmark, in the same run.

  bench/bench_cli.py [--build DIR] [--model M] [--requests 256] [--gen 128] [--batch 256]

1. bench_forward at the same batch, prompt 128, gen 128: the engine alone (no scheduling, no
   sampling, no detokenizing, no JSON), tokens/s over prefill + decode.
2. `tandem generate` on --requests prompts of mixed lengths (32-224 tokens, 128 on average),
   greedy, --gen new tokens each (--ignore-eos), --batch running at once: generated tokens/s
   after the model is loaded (what the CLI's summary reports).
Prints both and their ratio (target: the CLI >= 0.9 of the engine), then one JSON line.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap.add_argument("--build", default=os.path.join(root, "build"))
ap.add_argument("--model", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--requests", type=int, default=256)
ap.add_argument("--gen", type=int, default=128)
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--kv-budget", default="2G")
a = ap.parse_args()

words = ("the of and to in is was for that on with as by at from his her they this which be an had "
         "are not but were all one their there been has have when who more will would she some into "
         "time river mountain city music science history garden ocean window letter system").split()
rng = random.Random(42)
tmp = tempfile.mkdtemp(prefix="tandem-bench-")
inp = os.path.join(tmp, "prompts.jsonl")
with open(inp, "w") as f:
    for i in range(a.requests):
        n = rng.randint(24, 172)  # words: about 32-224 tokens with the leading space tokens
        f.write(json.dumps({"id": i, "prompt": " ".join(rng.choice(words) for _ in range(n)).capitalize()}) + "\n")

eng = subprocess.run([os.path.join(a.build, "bench", "bench_forward"), "--model", a.model, "--batch",
                      str(a.batch), "--prompt", "128", "--gen", str(a.gen), "--jsonl", os.path.join(tmp, "e.jsonl")],
                     capture_output=True, text=True, check=True)
e = json.loads(open(os.path.join(tmp, "e.jsonl")).read().splitlines()[-1])
engine_tps = e["batch"] * e["gen"] / (e["prefill_s"] + e["decode_s"])

cli = subprocess.run([os.path.join(a.build, "tools", "tandem"), "generate", "--model", a.model, "--input", inp,
                      "--output", os.path.join(tmp, "out.jsonl"), "--max-tokens", str(a.gen), "--temperature", "0",
                      "--ignore-eos", "--batch", str(a.batch), "--kv-budget", a.kv_budget, "--quiet"],
                     capture_output=True, text=True)
if cli.returncode:
    sys.exit(f"tandem generate failed: {cli.stderr}")
m = re.search(r"([0-9.]+) s after loading: ([0-9.]+) generated tok/s", cli.stderr)
gen = re.search(r"\+ ([0-9]+) generated tokens", cli.stderr)
cli_s, cli_tps = float(m.group(1)), float(m.group(2))
n_out = sum(1 for _ in open(os.path.join(tmp, "out.jsonl")))

print(f"# {a.requests} requests of 32-224 prompt tokens, {a.gen} new tokens each, batch {a.batch}, greedy")
print(f"engine (bench_forward, batch {a.batch}, prompt 128): {engine_tps:8.0f} tok/s over prefill + decode "
      f"(decode alone {e['decode_tok_s']:.0f} tok/s)")
print(f"CLI    (tandem generate):                        {cli_tps:8.0f} generated tok/s "
      f"({gen.group(1)} tokens, {n_out} records, {cli_s:.1f} s after loading)")
print(f"ratio CLI / engine: {cli_tps / engine_tps:.2f} (against decode alone, which leaves out the CLI's "
      f"prefill of every prompt: {cli_tps / e['decode_tok_s']:.2f})")
print(json.dumps({"bench": "cli", "requests": a.requests, "gen": a.gen, "batch": a.batch,
                  "engine_tok_s": round(engine_tps, 1), "engine_decode_tok_s": e["decode_tok_s"],
                  "cli_tok_s": cli_tps, "cli_seconds": cli_s, "ratio": round(cli_tps / engine_tps, 3),
                  "ratio_vs_decode": round(cli_tps / e["decode_tok_s"], 3),
                  "records": n_out}))
