"""Fixtures of the binding tests: the default model, the `tandem` CLI and one
shared engine.

CTest runs this suite (tests/CMakeLists.txt: python_bindings) with
TANDEM_LIBRARY, TANDEM_BIN and TANDEM_TEST_MODEL set to the build's files;
run by hand (python3 -m pytest python/tests) it takes the checkout's build/
and models/.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tandem

REPO = Path(__file__).resolve().parents[2]

# Small and quick: a 128 MiB KV pool (the default is a quarter of memory, up
# to 4 GiB, faulted in at open), the batch sizes of the C API tests.
ENGINE_ARGS: dict[str, Any] = {"kv_budget": "128M", "max_batch": 16, "step_tokens": 256}
CLI_ARGS = ["--kv-budget", "128M", "--batch", "16", "--step-tokens", "256"]


@pytest.fixture(scope="session")
def model() -> str:
    path = os.environ.get("TANDEM_TEST_MODEL") or str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        pytest.fail(f"no model at {path}: run scripts/fetch-model (or set TANDEM_TEST_MODEL)")
    return path


@pytest.fixture(scope="session")
def cli() -> str:
    path = os.environ.get("TANDEM_BIN") or str(REPO / "build" / "tools" / "tandem")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no tandem CLI at {path}: build it (make) or set TANDEM_BIN")
    return path


@pytest.fixture(scope="session")
def engine(model: str) -> Iterator[tandem.Engine]:
    with tandem.Engine(model, **ENGINE_ARGS) as e:
        yield e


def run_cli(cli: str, model: str, records: list[dict[str, Any]], args: list[str], tmp: Path) -> dict[str, dict]:
    """`tandem generate` over JSONL records; its output records by id."""
    inp = tmp / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cmd = [cli, "generate", "--model", model, "--input", str(inp), "--output", "-", "--quiet"] + CLI_ARGS + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}: {p.stderr}"
    out = [json.loads(line) for line in p.stdout.splitlines()]
    return {r["id"]: r for r in out}
