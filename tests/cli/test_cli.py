#!/usr/bin/env python3
"""Runs the `tandem` binary as a user would: each input format, bad lines,
an over-long prompt, KV exhaustion with preemption, resume after SIGKILL,
usage errors. Greedy decoding everywhere, so outputs can be compared across
runs; run by CTest (tests/CMakeLists.txt) with the binary and the model."""
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TANDEM = os.environ["TANDEM_BIN"]
MODEL = os.environ["TANDEM_TEST_MODEL"]
TMP = tempfile.mkdtemp(prefix="tandem-cli-")

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "def add(a, b):",
    "The three primary colors are",
    "List of planets:\n1.",
    "Water boils at",
    "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n",
    "In 1969,",
]


def path(name):
    return os.path.join(TMP, name)


def write_lines(name, lines):
    with open(path(name), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    return path(name)


def jsonl(prompts, ids=None):
    ids = ids or [f"r{i}" for i in range(len(prompts))]
    return [json.dumps({"id": i, "prompt": p}) for i, p in zip(ids, prompts)]


def run(args, check=True, **kw):
    # a small KV pool unless the test sets one: the default (a quarter of RAM, up to 4 GiB) is
    # faulted in at start, seconds per run on a loaded CI machine
    budget = [] if "--kv-budget" in args else ["--kv-budget", "256M"]
    cmd = [TANDEM, "generate", "--model", MODEL, "--temperature", "0", "--quiet"] + budget + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}: {p.stderr}")
    return p


def records(name):
    with open(path(name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def by_id(recs, key="id"):
    out = {}
    for r in recs:
        assert r[key] not in out, f"id {r[key]} twice"
        out[r[key]] = r
    return out


class Cli(unittest.TestCase):
    reference = None

    @classmethod
    def setUpClass(cls):
        inp = write_lines("ref.jsonl", jsonl(PROMPTS))
        run(["--input", inp, "--output", path("ref.out"), "--max-tokens", "24"])
        cls.reference = by_id(records("ref.out"))

    def test_jsonl(self):
        ref = self.reference
        self.assertEqual(sorted(ref), sorted(f"r{i}" for i in range(len(PROMPTS))))
        self.assertEqual(ref["r0"]["completion"], "The capital of France is Paris.")
        self.assertEqual(ref["r0"]["finish_reason"], "stop")
        for r in ref.values():
            self.assertIn(r["finish_reason"], ("stop", "length"))
            self.assertLessEqual(r["completion_tokens"], 24)
            self.assertGreater(r["prompt_tokens"], 0)

    def test_openai_batch(self):
        lines = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": "smollm2", "max_tokens": 24,
                                      "messages": [{"role": "user", "content": "What is the capital of France?"}]}})
                 for i in range(2)]
        run(["--input", write_lines("oa.jsonl", lines), "--output", path("oa.out")])
        out = by_id(records("oa.out"), "custom_id")
        self.assertEqual(sorted(out), ["c0", "c1"])
        body = out["c0"]["response"]["body"]
        self.assertEqual(out["c0"]["response"]["status_code"], 200)
        self.assertIsNone(out["c0"]["error"])
        self.assertEqual(body["choices"][0]["message"]["role"], "assistant")
        # SmolLM2's template adds its default system prompt: the same conversation as r0 plus it
        self.assertEqual(body["choices"][0]["message"]["content"], "The capital of France is Paris.")
        self.assertEqual(body["usage"]["total_tokens"],
                         body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"])

    def test_text_and_chat_flag(self):
        run(["--input", write_lines("t.txt", ["What is the capital of France?", "", "Name a fruit."]),
             "--output", path("t.out"), "--chat", "--max-tokens", "24"])
        out = by_id(records("t.out"))
        self.assertEqual(sorted(out), ["1", "3"])  # line numbers; the blank line is no prompt
        self.assertEqual(out["1"]["completion"], "The capital of France is Paris.")

    def test_bad_lines_and_overlong_prompt(self):
        lines = jsonl(PROMPTS[:2]) + ['{"id": "bad", "prompt": 7}', "{not json", json.dumps(
            {"id": "long", "prompt": "word " * 9000})] + jsonl(PROMPTS[2:3], ["r2"])
        p = run(["--input", write_lines("bad.jsonl", lines), "--output", path("bad.out"), "--max-tokens", "24"])
        self.assertIn(":3:", p.stderr)  # each bad line named by its number
        self.assertIn(":4:", p.stderr)
        out = by_id(records("bad.out"))
        for i in ("r0", "r1", "r2"):
            self.assertEqual(out[i]["completion"], self.reference[i]["completion"])
        self.assertIn("error", out["bad"])
        self.assertIn("context", out["long"]["error"]["message"])

    def test_preemption_same_outputs(self):
        # 5 blocks of 16 tokens for 8 requests of ~20 + 24 tokens: they queue, and grow into each other
        inp = write_lines("pre.jsonl", jsonl(PROMPTS))
        p = run(["--input", inp, "--output", path("pre.out"), "--max-tokens", "24", "--kv-budget", "2M"])
        out = by_id(records("pre.out"))
        for i, r in self.reference.items():
            self.assertEqual(out[i]["completion"], r["completion"], i)
        m = p.stderr.split("preemptions")[0].split()[-1]
        self.assertGreater(int(m), 0, p.stderr)

    def test_resume_after_kill(self):
        prompts = PROMPTS * 3
        ids = [f"k{i}" for i in range(len(prompts))]
        inp = write_lines("kill.jsonl", jsonl(prompts, ids))
        full = path("kill-full.out")
        run(["--input", inp, "--output", full, "--max-tokens", "24", "--batch", "2"])
        cmd = [TANDEM, "generate", "--model", MODEL, "--temperature", "0", "--quiet", "--kv-budget", "256M",
               "--input", inp, "--output", path("kill.out"), "--max-tokens", "24", "--batch", "2"]
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            if os.path.exists(path("kill.out")):
                with open(path("kill.out"), "rb") as f:
                    if f.read().count(b"\n") >= 4:
                        break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(path("kill.out"), "ab") as f:  # as if killed mid-write: a partial last line
            f.write(b'{"id": "k99", "compl')
        run(["--input", inp, "--output", path("kill.out"), "--max-tokens", "24", "--batch", "2", "--resume"])
        with open(full, encoding="utf-8") as f:
            want = by_id([json.loads(line) for line in f])
        got = by_id(records("kill.out"))  # by_id fails on a duplicate id
        self.assertEqual(sorted(got), sorted(ids))
        for i in ids:
            self.assertEqual(got[i]["completion"], want[i]["completion"], i)

    def test_device_emu_equals_cpu(self):
        # mode device on the emulated device: every op through the device interface, the same tokens,
        # also when the KV pool is small enough to preempt (the pool is then the device's)
        inp = write_lines("emu.jsonl", jsonl(PROMPTS))
        p = run(["--input", inp, "--output", path("emu.out"), "--max-tokens", "24", "--device", "emu",
                 "--mode", "device"])
        self.assertIn("device emu", p.stderr)
        out = by_id(records("emu.out"))
        for i, r in self.reference.items():
            self.assertEqual(out[i]["completion"], r["completion"], i)
        run(["--input", inp, "--output", path("emu2.out"), "--max-tokens", "24", "--device", "emu",
             "--kv-budget", "2M"])
        out = by_id(records("emu2.out"))
        for i, r in self.reference.items():
            self.assertEqual(out[i]["completion"], r["completion"], i)

    def test_cpu_attn_equals_cpu_and_traces(self):
        # attention on the CPU over a host KV cache, the linear layers on the (emulated) device, two
        # sub-batches pipelined: the same tokens; the trace is Chrome trace-event JSON with a slice per
        # stage; the summary gives the overlap
        inp = write_lines("ca.jsonl", jsonl(PROMPTS))
        trace = path("ca.trace.json")
        p = run(["--input", inp, "--output", path("ca.out"), "--max-tokens", "24", "--device", "emu",
                 "--mode", "cpu-attn", "--trace", trace])
        self.assertIn("mode cpu-attn", p.stderr)
        out = by_id(records("ca.out"))
        for i, r in self.reference.items():
            self.assertEqual(out[i]["completion"], r["completion"], i)
        m = re.search(r"pipeline: (\d+) steps.*overlap efficiency ([0-9.]+)", p.stderr)
        self.assertIsNotNone(m, p.stderr)
        steps, eff = int(m.group(1)), float(m.group(2))
        self.assertGreater(steps, 0)
        self.assertTrue(0 < eff <= 1.0, eff)
        with open(trace, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
        tracks = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
        stage_tracks = {"device stream", "copy D2H", "copy H2D", "CPU attention"}
        self.assertTrue(stage_tracks <= set(tracks.values()), tracks)
        # a track per CPU thread of the attention team (2 on this machine's default), with the
        # decode kernel's shares inside their attend stage (the prompts, at position 0, attend on
        # the device: 'attn-dev' on the device's track, and only their K and V come down)
        threads = {tid for tid, name in tracks.items() if name.startswith("CPU thread ")}
        self.assertEqual(set(tracks.values()) - stage_tracks, {tracks[t] for t in threads})
        self.assertGreaterEqual(len(threads), 1)
        stage_slices = [e for e in events if e["ph"] == "X" and e["tid"] not in threads]
        thread_slices = [e for e in events if e["ph"] == "X" and e["tid"] in threads]
        self.assertEqual({e["name"] for e in thread_slices}, {"decode"})
        attend = {(e["args"]["step"], e["args"]["layer"], e["args"]["sub_batch"]): e
                  for e in stage_slices if e["name"] == "attend"}
        for e in thread_slices:
            a = attend[(e["args"]["step"], e["args"]["layer"], e["args"]["sub_batch"])]
            self.assertTrue(a["ts"] - 1 <= e["ts"] and e["ts"] + e["dur"] <= a["ts"] + a["dur"] + 1, (e, a))
        slices = stage_slices
        self.assertEqual({e["name"] for e in slices}, {"pre", "attn-dev", "down", "attend", "up", "post"})
        self.assertEqual({e["args"]["step"] for e in slices if e["name"] == "attn-dev"}, {0})  # the prompts' step
        self.assertEqual(len({e["args"]["step"] for e in slices}), steps)
        self.assertEqual({e["args"]["layer"] for e in slices}, set(range(30)))  # SmolLM2's 30 layers
        self.assertEqual({e["args"]["sub_batch"] for e in slices}, {0, 1})
        self.assertTrue(all(e["dur"] >= 0 and e["ts"] >= 0 for e in slices))

    def test_hybrid_equals_cpu(self):
        # two KV pools: a device pool of 3 MB (8 blocks) holds the first requests, the rest go to the
        # host pool and attend on the CPU; as sequences grow the device pool runs out and its newest
        # sequences move to the host pool (blocks copied, nothing recomputed); the two short requests
        # finish early and a host sequence moves back; the same tokens as the CPU alone
        recs = [{"id": "h0", "prompt": PROMPTS[1], "max_tokens": 24}, {"id": "h1", "prompt": PROMPTS[2], "max_tokens": 30}]
        recs += [{"id": f"h{i}", "prompt": PROMPTS[i]} for i in (3, 4, 5, 7)]
        recs = [json.dumps(r) for r in recs]
        inp = write_lines("hy.jsonl", recs)
        run(["--input", inp, "--output", path("hy.cpu"), "--max-tokens", "60", "--device", "cpu"])
        p = run(["--input", inp, "--output", path("hy.out"), "--max-tokens", "60", "--device", "emu",
                 "--mode", "hybrid", "--device-kv", "3M"])
        self.assertIn("mode hybrid", p.stderr)
        self.assertIn("pipeline:", p.stderr)
        m = re.search(r"KV moves: (\d+) sequences to the host pool, (\d+) back to the device", p.stderr)
        self.assertIsNotNone(m, p.stderr)
        self.assertGreater(int(m.group(1)), 0)
        self.assertGreater(int(m.group(2)), 0)
        ref, out = by_id(records("hy.cpu")), by_id(records("hy.out"))
        self.assertEqual(len(out), 6)
        for i, r in ref.items():
            self.assertEqual(out[i]["completion"], r["completion"], i)
            self.assertEqual(out[i]["completion_tokens"], r["completion_tokens"], i)
        # with a profile whose CPU attends at 10 MB/s, the cost model holds the host pool's decodes
        # back while the device's run (they go on when those finish, or move back): the same tokens
        with open(os.path.join(ROOT, "offload", "presets", "T4.json"), encoding="utf-8") as f:
            prof = json.load(f)
        prof["cpu"]["attn"] = [[t, ctx, 0.01] for t, ctx, _ in prof["cpu"]["attn"]]
        with open(path("slow-cpu.json"), "w", encoding="utf-8") as f:
            json.dump(prof, f)
        p = run(["--input", inp, "--output", path("hy2.out"), "--max-tokens", "60", "--device", "emu",
                 "--mode", "hybrid", "--device-kv", "3M", "--profile", path("slow-cpu.json")])
        m = re.search(r"held back (\d+) host-pool decodes", p.stderr)
        self.assertIsNotNone(m, p.stderr)
        self.assertGreater(int(m.group(1)), 0)
        out = by_id(records("hy2.out"))
        for i, r in ref.items():
            self.assertEqual(out[i]["completion"], r["completion"], i)

    def test_plan(self):
        # the cost model's prediction for a preset machine: the chosen mode is the fastest of the three,
        # the chart is SVG with a polyline per series; a fixed host count is evaluated as asked
        svg = path("plan.svg")
        p = subprocess.run([TANDEM, "plan", "--profile", "T4", "--model", MODEL, "--batch", "64", "--ctx", "2048",
                            "--svg", svg, "--json"], capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        r = json.loads(p.stdout)
        modes = {"device": r["device_tok_s"], "cpu-attn": r["cpu_attn_tok_s"], "hybrid": r["hybrid_tok_s"]}
        self.assertTrue(all(v >= 0 for v in modes.values()) and max(modes.values()) > 0, r)
        self.assertEqual(r["chosen"], max(modes, key=modes.get))
        self.assertAlmostEqual(r["chosen_tok_s"], modes[r["chosen"]], delta=0.2)
        self.assertLess(r["search_ms"], 50)
        import xml.etree.ElementTree as ET
        root = ET.parse(svg).getroot()
        self.assertTrue(root.tag.endswith("svg"))
        self.assertGreaterEqual(len([e for e in root.iter() if e.tag.endswith("polyline")]), 4)
        p = subprocess.run([TANDEM, "plan", "--profile", "T4", "--model", MODEL, "--batch", "64", "--ctx", "2048",
                            "--host-seqs", "5", "--svg", "-", "--json"], capture_output=True, text=True, timeout=60)
        self.assertEqual(json.loads(p.stdout)["hybrid_host_seqs"], 5)
        # errors: an unknown preset names the presets there are; a missing profile is a usage error
        p = subprocess.run([TANDEM, "plan", "--profile", "V100", "--model", MODEL, "--svg", "-"], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("H100-PCIe", p.stderr)
        p = subprocess.run([TANDEM, "plan", "--batch", "0"], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--batch", p.stderr)

    def test_emu_timed(self):
        # timed mode: the device takes an H100's time and computes nothing; the job runs to the end
        inp = write_lines("timed.jsonl", jsonl(PROMPTS[:4]))
        p = run(["--input", inp, "--output", path("timed.out"), "--max-tokens", "8", "--ignore-eos",
                 "--device", "emu", "--emu-gpu", "H100-PCIe", "--emu-link", "pcie5-x16", "--mode", "cpu-attn"])
        self.assertIn("emu timed H100-PCIe + pcie5-x16", p.stderr)
        out = records("timed.out")
        self.assertEqual(len(out), 4)
        self.assertTrue(all(r["completion_tokens"] == 8 for r in out))
        p = run(["--input", inp, "--output", path("t2.out"), "--device", "emu", "--emu-gpu", "V100"], check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("V100", p.stderr)
        p = run(["--input", inp, "--output", path("t3.out"), "--device", "cpu", "--emu-link", "pcie4-x16"],
                check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("device emu only", p.stderr)

    def test_device_errors(self):
        inp = write_lines("dev.jsonl", jsonl(PROMPTS[:1]))
        # auto says where it runs, and why when it falls back
        p = run(["--input", inp, "--output", path("auto.out"), "--max-tokens", "4"])
        self.assertRegex(p.stderr, r"device (cpu \(.*cuda.*\)|cuda: )")
        p = run(["--input", inp, "--output", path("cuda.out"), "--device", "cuda"], check=False)
        if p.returncode != 0:  # no GPU here: one clear line, the job does not run
            self.assertEqual(p.returncode, 2)
            self.assertIn("device cuda", p.stderr)
        p = run(["--input", inp, "--output", path("h.out"), "--mode", "hybrid", "--device", "cpu"], check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("hybrid needs a device", p.stderr)
        p = run(["--input", inp, "--output", path("c.out"), "--mode", "device", "--device", "cpu"], check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("needs a device", p.stderr)
        p = run(["--input", inp, "--output", path("x.out"), "--device", "tpu"], check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--device", p.stderr)

    def test_synthetic_model(self):
        # tools/synth_model.py writes a Llama-shaped GGUF of any size with random weights (for benchmarks):
        # it opens and runs like any model, on the CPU and in cpu-attn mode
        synth = path("synth.gguf")
        tool = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "synth_model.py")
        subprocess.run([sys.executable, tool, "--layers", "2", "--embd", "256", "--heads", "4", "--kv-heads", "2",
                        "--ff", "512", "--ctx", "1024", "--tokenizer-from", MODEL, "--out", synth],
                       check=True, capture_output=True, timeout=300)
        inp = write_lines("synth.jsonl", jsonl(PROMPTS[:3]))
        for extra in ([], ["--device", "emu", "--mode", "cpu-attn"]):
            cmd = [TANDEM, "generate", "--model", synth, "--input", inp, "--output", path("synth.out"),
                   "--max-tokens", "6", "--ignore-eos", "--quiet", "--kv-budget", "64M"] + extra
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            out = records("synth.out")
            self.assertEqual(len(out), 3)
            self.assertTrue(all(r["completion_tokens"] == 6 for r in out))

    def test_usage_errors(self):
        p = subprocess.run([TANDEM, "generate", "--help"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0)
        self.assertIn("--input", p.stdout)
        p = subprocess.run([TANDEM, "generate", "--bogus"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--bogus", p.stderr)
        p = subprocess.run([TANDEM, "generate", "--input", "x", "--output", "y", "--top-k", "nope"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("top-k", p.stderr)
        p = subprocess.run([TANDEM, "generate", "--input", path("missing.jsonl"), "--output", path("m.out")],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("missing.jsonl", p.stderr)
        p = subprocess.run([TANDEM, "nope"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
