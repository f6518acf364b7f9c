#!/usr/bin/env python3
"""Runs a batch of prompts through Tandem from Python and prints the
completions and the throughput.

    pip install ./python                     # after building (make)
    python3 examples/batch.py                # examples/prompts.jsonl, the default model
    python3 examples/batch.py --model model.gguf --repeat 32 --max-tokens 128

Input: JSONL records {"id": ..., "prompt": ..., "max_tokens": ...} as the CLI reads them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tandem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(Path(__file__).with_name("prompts.jsonl")))
    ap.add_argument("--model", help="GGUF file (default: the library's default model)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, emu")
    ap.add_argument("--max-tokens", type=int, default=64, help="for records that give none")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=1, help="run each prompt this many times (a bigger batch)")
    ap.add_argument("--kv-budget", default="1G")
    args = ap.parse_args()

    with open(args.input, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()] * args.repeat
    prompts = [r["prompt"] for r in records]
    sampling = [
        tandem.SamplingParams(max_tokens=r.get("max_tokens", args.max_tokens), temperature=args.temperature)
        for r in records
    ]

    t0 = time.perf_counter()
    with tandem.Engine(args.model, device=args.device, kv_budget=args.kv_budget) as engine:
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        results = engine.generate(prompts, sampling)
        t_run = time.perf_counter() - t1
        stats = engine.stats()
        device = engine.device

    for r, c in zip(records[: len(records) // args.repeat], results):
        shown = c.text if c.ok else f"error: {c.error}"
        print(f"[{r.get('id', c.index)}] ({c.finish_reason}, {len(c.token_ids)} tokens) {shown.strip()[:200]!r}")
    generated = sum(len(c.token_ids) for c in results)
    prompt_tokens = sum(len(c.prompt_token_ids) for c in results)
    print(
        f"\n{len(results)} requests on {device.split(' (')[0]}: {prompt_tokens} prompt + {generated} generated tokens "
        f"in {t_run:.2f} s ({generated / t_run:.0f} generated tok/s, {(prompt_tokens + generated) / t_run:.0f} "
        f"tok/s in all); model loaded in {t_load:.2f} s; {stats.steps} steps, peak KV "
        f"{stats.kv_bytes_peak / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
