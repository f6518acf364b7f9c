"""Engines and requests are released: by close(), by a with block, by the
finalizer, and nothing grows over many open/close cycles."""

from __future__ import annotations

import ctypes
import gc

import tandem

# A small KV pool: each cycle then costs little besides the weights.
ARGS = {"kv_budget": "32M", "max_batch": 8, "step_tokens": 256}
GREEDY = tandem.SamplingParams(max_tokens=4, temperature=0)


def rss_bytes() -> int:
    """Resident memory of what is still allocated: glibc keeps freed memory in
    its arenas (here between about 100 and 300 MB from one cycle to the next),
    malloc_trim hands that back first."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's
    if trim is not None:
        trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def cycle(model: str) -> None:
    """Open, use every kind of request, drop a stream unfinished, close."""
    with tandem.Engine(model, **ARGS) as e:
        assert e.generate(["Once upon a time", "Water boils at"], GREEDY)[0].ok
        s = e.stream("def add(a, b):", tandem.SamplingParams(max_tokens=50, temperature=0))
        next(s)  # left unfinished: the engine's close frees it


def test_open_close_does_not_leak(model: str) -> None:
    """20 cycles after a warm-up: a leaked engine would keep its weights
    (135M parameters in bf16: about 270 MB) and its 32 MiB KV pool; what
    stays allocated after a cycle is the same each time (measured: within
    1 MiB), so a bound of 16 MiB over all 20 catches one leaked engine, or
    anything that leaks 1 MiB a cycle."""
    for _ in range(3):
        cycle(model)
    before = rss_bytes()
    for _ in range(20):
        cycle(model)
    grown = rss_bytes() - before
    assert grown < 16 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 20 open/close cycles"


def test_finalizer_closes_a_dropped_engine(model: str) -> None:
    e = tandem.Engine(model, **ARGS)
    s = e.stream("Once upon a time", GREEDY)
    next(s)
    finalizer = e._finalizer
    del e, s  # the stream held the engine: both go
    gc.collect()
    assert not finalizer.alive


def test_with_blocks_release(model: str) -> None:
    with tandem.Engine(model, **ARGS) as e:
        with e.stream("Once upon a time", GREEDY) as s:
            next(s)
        assert e._state.requests == {}  # the stream's request was freed on leaving its block
        results = e.generate(["Once upon a time"] * 3, GREEDY)
        assert e._state.requests == {} and len(results) == 3  # generate frees its requests
    assert e.closed
