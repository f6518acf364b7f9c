#!/usr/bin/env python3
"""Where should attention run? The cost model's decode tokens/s of each mode on a few machines.

    python3 examples/plan.py                           # presets T4, A10G, H100-PCIe; the default model
    python3 examples/plan.py --tune                    # this machine too (tandem.tune: seconds)
    python3 examples/plan.py --ctx 8192 --batch 16 64 256 --model model.gguf

The same numbers as `tandem plan --json`, through tandem.plan (and tandem.tune for --tune).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import tandem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["T4", "A10G", "H100-PCIe"], help="presets or profile files")
    ap.add_argument("--tune", action="store_true", help="measure this machine and plan on it too")
    ap.add_argument("--model", help="GGUF whose shapes to use (default: the library's default model)")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--ctx", type=int, default=2048)
    args = ap.parse_args()

    profiles = list(args.profiles)
    if args.tune:
        out = Path(tempfile.mkdtemp()) / "profile.json"
        tandem.tune(out, progress=lambda stage, f: print(f"  tune {f:4.0%} {stage}", file=sys.stderr))
        profiles.append(str(out))

    print(f"{'profile':<12} {'batch':>5} {'device':>9} {'cpu-attn':>9} {'hybrid':>9}  chosen (tok/s at ctx {args.ctx})")
    for profile in profiles:
        for batch in args.batch:
            try:
                p = tandem.plan(profile, model=args.model, batch=batch, ctx=args.ctx)
            except tandem.TandemError as e:
                print(f"{Path(profile).name:<12} {batch:>5}  {e.message}")
                continue
            print(
                f"{Path(profile).name:<12} {batch:>5} {p.device_tok_s:>9.0f} {p.cpu_attn_tok_s:>9.0f} "
                f"{p.hybrid_tok_s:>9.0f}  {p.chosen}"
                + (f" ({p.hybrid_host_seqs} sequences on the CPU)" if p.chosen == "hybrid" else "")
            )


if __name__ == "__main__":
    main()
