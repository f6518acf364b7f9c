"""Streaming: tokens arrive in order, concatenate to the final text, and equal
what generate() gives; streams interleave, cancel, fail and get dropped."""

from __future__ import annotations

import gc

import pytest

import tandem

GREEDY = tandem.SamplingParams(max_tokens=20, temperature=0)


def test_stream_equals_generate(engine: tandem.Engine) -> None:
    for prompt in ["Once upon a time", "Héllo! Write an emoji:"]:
        ref = engine.generate(prompt, GREEDY)[0]
        with engine.stream(prompt, GREEDY) as s:
            tokens = list(s)
        assert s.result is not None
        assert [t.id for t in tokens] == ref.token_ids == s.result.token_ids
        assert "".join(t.text for t in tokens) == ref.text == s.result.text
        assert s.result.finish_reason == ref.finish_reason
        assert list(s) == []  # exhausted


def test_stop_string_text_held_back(engine: tandem.Engine) -> None:
    """Text that may begin a stop string comes later (or never): the streamed
    texts still concatenate to the final text, which excludes the stop."""
    full = engine.generate("Once upon a time", GREEDY)[0].text
    stop = " was a"
    assert stop in full
    params = tandem.SamplingParams(max_tokens=20, temperature=0, stop=[stop])
    tokens = list(engine.stream("Once upon a time", params))
    text = "".join(t.text for t in tokens)
    assert text == full[: full.index(stop)]
    assert any(t.text == "" for t in tokens)  # the tokens of " was" printed nothing yet


def test_streams_interleave_in_order(engine: tandem.Engine) -> None:
    prompts = ["Once upon a time", "def add(a, b):", "Water boils at"]
    refs = engine.generate(prompts, GREEDY)
    streams = [engine.stream(p, GREEDY) for p in prompts]
    got: list[list[int]] = [[] for _ in prompts]
    live = set(range(len(prompts)))
    while live:  # one token from each in turn: each step advances all three
        for i in sorted(live):
            try:
                got[i].append(next(streams[i]).id)
            except StopIteration:
                live.discard(i)
    assert got == [r.token_ids for r in refs]
    assert [s.result.text for s in streams] == [r.text for r in refs]


def test_cancel(engine: tandem.Engine) -> None:
    s = engine.stream("Once upon a time", tandem.SamplingParams(max_tokens=200, temperature=0))
    first = [next(s) for _ in range(3)]
    s.cancel()
    s.cancel()  # idempotent
    rest = list(s)  # what the step in flight produced, then the end
    s.cancel()
    assert s.result is not None and s.result.finish_reason == "cancelled"
    assert [t.id for t in first + rest] == s.result.token_ids
    assert len(s.result.token_ids) < 10
    assert engine.stats().running == 0
    s2 = engine.stream("Once upon a time", tandem.SamplingParams(max_tokens=200, temperature=0))
    next(s2)
    s2.cancel()
    s2.close()  # before the cancellation's step: freed all the same
    assert engine._state.requests == {} and engine.stats().running == 0


def test_dropped_stream_is_freed(engine: tandem.Engine) -> None:
    s = engine.stream("Once upon a time", tandem.SamplingParams(max_tokens=500, temperature=0))
    next(s)
    del s
    gc.collect()
    # the next call frees it (cancelled, no callback): the engine is idle again
    assert engine.generate("Water boils at", GREEDY)[0].ok
    stats = engine.stats()
    assert stats.running == stats.queued == 0 and stats.kv_bytes_used == 0
    assert engine._state.requests == {}


def test_failed_request_raises(engine: tandem.Engine) -> None:
    s = engine.stream([1000] * 9000, GREEDY)  # longer than the context
    with pytest.raises(tandem.TandemError, match="context") as info:
        list(s)
    assert info.value.status_name == "TANDEM_ERR_LIMIT"
    assert s.result is not None and s.result.finish_reason == "error"
