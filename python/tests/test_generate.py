"""Generation through the bindings equals the CLI's on the same requests, and
what the results carry (ids, counts, timings, stats) is consistent."""

from __future__ import annotations

from pathlib import Path

import tandem
from conftest import run_cli

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "def add(a, b):",
    "List of planets:\n1.",
    "Water boils at",
]
CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)
GREEDY = tandem.SamplingParams(max_tokens=24, temperature=0)


def check_against_cli(results: list[tandem.Completion], ref: dict[str, dict]) -> None:
    assert len(results) == len(ref)
    for c in results:
        r = ref[f"r{c.index}"]
        assert c.ok, c.error
        assert c.text == r["completion"], f"prompt {c.index}"
        assert len(c.prompt_token_ids) == r["prompt_tokens"]
        assert len(c.token_ids) == r["completion_tokens"]
        assert c.finish_reason == r["finish_reason"]


def test_greedy_equals_cli(engine: tandem.Engine, cli: str, model: str, tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    ref = run_cli(cli, model, records, ["--temperature", "0", "--max-tokens", "24"], tmp_path)
    results = engine.generate(PROMPTS, GREEDY)
    assert [c.index for c in results] == list(range(len(PROMPTS)))
    assert [c.prompt for c in results] == PROMPTS
    check_against_cli(results, ref)
    assert any(c.finish_reason == "length" for c in results)
    assert CHAT.endswith(PROMPTS[0]) and results[0].text.startswith("The capital of France is Paris")


def test_sampled_and_per_request_parameters_equal_cli(
    engine: tandem.Engine, cli: str, model: str, tmp_path: Path
) -> None:
    """Every sampling field reaches the library as the CLI passes it: seeded
    sampling with every filter, per-request max_tokens and stop strings."""
    common = dict(temperature=0.8, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1)
    per_request = [
        {"seed": 1},
        {"seed": 2, "max_tokens": 5},
        {"seed": 3, "stop": [" the", "\n"]},
        {"seed": 4, "temperature": 0.0},
    ]
    records = [{"id": f"r{i}", "prompt": PROMPTS[i + 1], **kw} for i, kw in enumerate(per_request)]
    ref = run_cli(
        cli,
        model,
        records,
        ["--temperature", "0.8", "--top-p", "0.9", "--top-k", "40", "--min-p", "0.05",
         "--repetition-penalty", "1.1", "--max-tokens", "16"],
        tmp_path,
    )
    params = [tandem.SamplingParams(**{"max_tokens": 16, **common, **kw}) for kw in per_request]
    results = engine.generate(PROMPTS[1:5], params)
    check_against_cli(results, ref)
    assert len(results[1].token_ids) == 5
    assert " the" not in results[2].text and "\n" not in results[2].text
    # a different seed samples differently: the seed is not ignored
    other = engine.generate(PROMPTS[1], tandem.SamplingParams(max_tokens=16, **common, seed=99))
    assert other[0].text != results[0].text


def test_token_prompts_and_chat(engine: tandem.Engine) -> None:
    text = engine.generate([CHAT, "Once upon a time"], GREEDY)
    ids = engine.generate([engine.tokenize(CHAT, parse_special=True), engine.tokenize("Once upon a time")], GREEDY)
    assert [c.text for c in ids] == [c.text for c in text]
    assert [c.token_ids for c in ids] == [c.token_ids for c in text]
    assert ids[0].prompt == text[0].prompt_token_ids
    # the engine's chat template (ChatML, SmolLM2's default system prompt) renders CHAT
    assert engine.chat_template == "chatml"
    chat = engine.chat([[{"role": "user", "content": "What is the capital of France?"}]], GREEDY)
    assert chat[0].prompt_token_ids == text[0].prompt_token_ids
    assert chat[0].text == text[0].text


def test_tokenize_detokenize(engine: tandem.Engine) -> None:
    text = "Héllo, wörld! 🙂 <|im_start|>"
    ids = engine.tokenize(text)
    assert ids and all(0 <= t < engine.n_vocab for t in ids)
    assert engine.detokenize(ids) == text
    special = engine.tokenize("<|im_start|>", parse_special=True)
    assert len(special) == 1 and engine.tokenize("<|im_start|>") != special
    assert engine.detokenize(special) == ""  # control tokens are not rendered
    assert engine.tokenize("hi", add_bos=True)[0] == engine.bos_token_id
    long = "word " * 3000
    assert engine.detokenize(engine.tokenize(long)) == long


def test_results_timings_and_stats(engine: tandem.Engine) -> None:
    before = engine.stats()
    results = engine.generate(PROMPTS[:3], tandem.SamplingParams(max_tokens=8, temperature=0))
    after = engine.stats()
    n_gen = sum(len(c.token_ids) for c in results)
    assert after.generated_tokens - before.generated_tokens == n_gen
    assert after.requests_finished - before.requests_finished == 3
    assert after.prompt_tokens - before.prompt_tokens == sum(len(c.prompt_token_ids) for c in results)
    assert after.steps > before.steps and after.run_seconds > before.run_seconds
    assert after.running == after.queued == 0 and after.kv_bytes_used == 0
    assert 0 < after.kv_bytes_peak <= after.kv_bytes_total
    for c in results:
        assert c.timings.time_to_first_token is not None
        assert 0 < c.timings.time_to_first_token <= c.timings.total
        assert c.timings.decode_tokens_per_second(len(c.token_ids)) > 0
        assert engine.detokenize(c.token_ids).startswith(c.text)
    assert engine.generate([]) == []


def test_a_request_that_cannot_run_fails_alone(engine: tandem.Engine) -> None:
    """Longer than the model's context: finish_reason "error", the batch goes on."""
    results = engine.generate([[1000] * 9000, "Once upon a time"], GREEDY)
    assert results[0].finish_reason == "error" and not results[0].ok
    assert isinstance(results[0].error, tandem.TandemError)
    assert results[0].error.status_name == "TANDEM_ERR_LIMIT" and "context" in results[0].error.message
    assert results[1].ok and results[1].text
