"""tandem.plan and tandem.tune: the cost model's plans equal `tandem plan`'s,
errors carry the library's message, and a profile measured on the emulated
device is one plan() reads."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tandem

PRESETS = ["T4", "A10G", "H100-PCIe"]


def cli_plan(cli: str, profile: str, model: str, args: list[str]) -> dict[str, Any]:
    """`tandem plan --json` for the same question: its one JSON line."""
    cmd = [cli, "plan", "--profile", profile, "--model", model, "--json", "--svg", "-"] + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}: {p.stderr}"
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


def assert_same_plan(p: tandem.Plan, j: dict[str, Any]) -> None:
    """The CLI prints tokens/s with one decimal and times in ms with three."""
    assert p.chosen == j["chosen"]
    for name in ("device_batch", "hybrid_host_seqs", "hybrid_sub_batches"):
        assert getattr(p, name) == j[name], name
    for name in ("device_tok_s", "cpu_attn_tok_s", "hybrid_tok_s", "chosen_tok_s"):
        assert getattr(p, name) == pytest.approx(j[name], abs=0.051), name
    for name, key in (
        ("step_seconds", "step_ms"),
        ("device_busy_seconds", "device_busy_ms"),
        ("link_busy_seconds", "link_busy_ms"),
        ("cpu_busy_seconds", "cpu_busy_ms"),
    ):
        assert 1e3 * getattr(p, name) == pytest.approx(j[key], abs=0.00051), name


@pytest.mark.parametrize("preset", PRESETS)
def test_plan_presets_match_the_cli(preset: str, model: str, cli: str) -> None:
    p = tandem.plan(preset, model=model)  # batch 64, ctx 2048: the CLI's defaults too
    assert p.device_tok_s > 0 and p.cpu_attn_tok_s > 0 and p.hybrid_tok_s > 0
    assert p.chosen in ("device", "cpu-attn", "hybrid")
    best = max(p.tokens_per_second.values())
    assert p.tokens_per_second[p.chosen] == best and p.chosen_tok_s == best
    assert 0 < p.step_seconds and p.search_seconds >= 0
    assert_same_plan(p, cli_plan(cli, preset, model, []))


def test_plan_arguments_match_the_cli(model: str, cli: str) -> None:
    p = tandem.plan("T4", model=model, batch=256, ctx=4096, gpu_mem="8G", host_kv=32 << 30)
    assert_same_plan(p, cli_plan(cli, "T4", model, ["--batch", "256", "--ctx", "4096", "--gpu-mem", "8G",
                                                    "--host-kv", "32G"]))
    p = tandem.plan("A10G", model=model, batch=32, ctx=1024, host_seqs=5)
    assert p.hybrid_host_seqs == 5
    assert_same_plan(p, cli_plan(cli, "A10G", model, ["--batch", "32", "--ctx", "1024", "--host-seqs", "5"]))


def test_plan_errors(model: str, tmp_path: Path) -> None:
    with pytest.raises(tandem.TandemError) as e:
        tandem.plan("no-such-gpu", model=model)
    assert e.value.status_name == "TANDEM_ERR_NOT_FOUND"
    assert "no-such-gpu" in e.value.message and "presets:" in e.value.message
    assert all(name in e.value.message for name in PRESETS)
    with pytest.raises(tandem.TandemError) as e:
        tandem.plan("T4", model=model, batch=0)
    assert e.value.status_name == "TANDEM_ERR_INVALID_ARGUMENT" and "batch 0" in e.value.message
    with pytest.raises(tandem.TandemError) as e:
        tandem.plan("T4", model=model, batch=4, host_seqs=5)
    assert "host_seqs 5" in e.value.message
    missing = tmp_path / "missing.json"
    with pytest.raises(tandem.TandemError) as e:
        tandem.plan(missing, model=model)
    assert str(missing) in e.value.message
    with pytest.raises(tandem.TandemError) as e:
        tandem.plan("T4", model=tmp_path / "missing.gguf")
    assert "missing.gguf" in e.value.message
    # what a C int cannot hold never reaches the library
    with pytest.raises(ValueError):
        tandem.plan("T4", batch=2**31)
    with pytest.raises(TypeError):
        tandem.plan("T4", ctx="2048")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tandem.plan("T4", gpu_mem="lots")


def test_tune_errors(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    with pytest.raises(ValueError, match="auto, cuda, emu"):
        tandem.tune(out, device="gpu")
    with pytest.raises(tandem.TandemError) as e:
        tandem.tune(out, device="cpu")
    assert e.value.status_name == "TANDEM_ERR_UNSUPPORTED"
    with pytest.raises(tandem.TandemError) as e:
        tandem.tune(out, emu_gpu="T4")  # device auto
    assert "device emu only" in e.value.message
    with pytest.raises(tandem.TandemError) as e:
        tandem.tune(out, device="emu", emu_gpu="GTX-480")
    assert "GTX-480" in e.value.message and "H100-PCIe" in e.value.message
    with pytest.raises(tandem.TandemError) as e:
        tandem.tune(out, device="emu", emu_link="usb2")
    assert "usb2" in e.value.message and "pcie4-x16" in e.value.message
    assert not out.exists()


def test_tune_on_the_emulated_device(model: str, tmp_path: Path) -> None:
    """One real measurement (seconds): the profile written is one plan()
    reads, progress comes in order, and the GIL is free while it runs."""
    out = tmp_path / "profile.json"
    calls: list[tuple[str, float, str]] = []
    ticks = 0
    done = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.01)

    def progress(stage: str, fraction: float) -> None:
        calls.append((stage, fraction, threading.current_thread().name))

    t = threading.Thread(target=ticker)
    t.start()
    try:
        t0 = time.monotonic()
        path = tandem.tune(out, device="emu", emu_gpu="T4", emu_link="pcie3-x16", progress=progress)
        elapsed = time.monotonic() - t0
    finally:
        done.set()
        t.join()
    assert path == str(out)
    profile = json.loads(out.read_text())
    assert isinstance(profile, dict) and profile

    fractions = [f for _, f, _ in calls]
    assert len(calls) >= 4
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any(s == "device GEMM" for s, _, _ in calls)
    assert calls[0][0].startswith("device ")  # which device it measured
    assert {name for _, _, name in calls} == {threading.current_thread().name}  # on the calling thread
    # the other thread ran while tune measured: the GIL was not held for the call
    assert elapsed > 0.5 and ticks > 3 * len(calls) + 10, (elapsed, ticks, len(calls))

    p = tandem.plan(profile=out, model=model)
    assert p.chosen_tok_s > 0 and p.device_tok_s > 0
