"""Threads, as include/tandem.h allows them: engines are independent (two
run at once in two threads), calls on one engine must not overlap (the
bindings serialize them, so one Engine may be shared), and the GIL is free
while the library computes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import tandem

# one OpenMP thread per engine: two engines on a two-core machine do not thrash
ARGS = {"kv_budget": "64M", "max_batch": 16, "step_tokens": 256, "threads": 1}
GREEDY = tandem.SamplingParams(max_tokens=16, temperature=0)
PROMPTS_A = ["Once upon a time", "def add(a, b):"]
PROMPTS_B = ["Water boils at", "List of planets:\n1.", "In 1969,"]


def in_threads(*fns: Callable[[], Any]) -> list[Any]:
    """Runs each fn in its own thread, started together; their results, or their exception."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []
    start = threading.Barrier(len(fns))

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = fns[i]()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def texts(results: list[tandem.Completion]) -> list[str]:
    return [c.text for c in results]


def test_two_engines_in_two_threads(model: str) -> None:
    with tandem.Engine(model, **ARGS) as a, tandem.Engine(model, **ARGS) as b:
        ref_a, ref_b = texts(a.generate(PROMPTS_A, GREEDY)), texts(a.generate(PROMPTS_B, GREEDY))
        got_a, got_b = in_threads(lambda: a.generate(PROMPTS_A, GREEDY), lambda: b.generate(PROMPTS_B, GREEDY))
        assert (texts(got_a), texts(got_b)) == (ref_a, ref_b)


def test_one_engine_shared_by_two_threads(model: str) -> None:
    """Calls are serialized per step: a batch and a stream from two threads
    run side by side in the same engine, each with its own results."""
    with tandem.Engine(model, **ARGS) as e:
        ref_a, ref_b = texts(e.generate(PROMPTS_A, GREEDY)), texts(e.generate(PROMPTS_B, GREEDY))

        def streamed() -> list[str]:
            out = []
            for p in PROMPTS_B:
                with e.stream(p, GREEDY) as s:
                    out.append("".join(t.text for t in s))
            return out

        for _ in range(2):
            got_a, got_b = in_threads(lambda: texts(e.generate(PROMPTS_A, GREEDY)), streamed)
            assert (got_a, got_b) == (ref_a, ref_b)
        stats = e.stats()
        assert stats.running == stats.queued == 0 and e._state.requests == {}


def test_the_gil_is_released_during_a_step(model: str) -> None:
    """A step that prefills a 512-token prompt takes a good fraction of a
    second in one thread; meanwhile this thread keeps running Python. Were
    the GIL held through the step, this thread would stall for all of it."""
    with tandem.Engine(model, **{**ARGS, "step_tokens": 1024}) as e:
        prompt = e.tokenize("The quick brown fox jumps over the lazy dog. " * 60)[:512]
        step_times: list[float] = []
        watching = threading.Event()

        def one_step() -> None:
            watching.wait()  # this thread's loop below runs: a stall cannot hide before it
            t = time.perf_counter()
            e.generate([prompt], tandem.SamplingParams(max_tokens=1, temperature=0))
            step_times.append(time.perf_counter() - t)

        worker = threading.Thread(target=one_step)
        longest_gap, last = 0.0, time.perf_counter()
        worker.start()
        watching.set()
        while worker.is_alive():
            now = time.perf_counter()
            longest_gap, last = max(longest_gap, now - last), now
        worker.join()
        assert step_times and step_times[0] > 0.1, "the step was too short to tell"
        assert longest_gap < step_times[0] / 2, f"stalled {longest_gap:.3f} s of a {step_times[0]:.3f} s step"
