"""The values the bindings hand in and out: sampling parameters, results,
streamed tokens, statistics, and the exception C failures become."""

from __future__ import annotations

import ctypes
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import _lib

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT64_MAX = 2**64 - 1


class TandemError(Exception):
    """A failure reported by libtandem: its status and its message.

    ``status`` is the numeric ``tandem_status``, ``status_name`` its name
    ("TANDEM_ERR_IO", ...), ``message`` the library's own text (for an engine
    call, ``tandem_engine_errmsg``; for a failed request,
    ``tandem_request_error``).
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.status_name = status_name(status)
        self.message = message
        super().__init__(f"{message} [{self.status_name}]")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.message))


def status_name(status: int) -> str:
    """"TANDEM_OK", "TANDEM_ERR_KV_FULL", ... (tandem_status_name)."""
    return _lib.lib().tandem_status_name(status).decode()


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """value as an int that the C field can hold: ctypes would wrap it silently."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)  # int, numpy integers
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value} is out of range [{lo}, {hi}]")
    return value


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request samples and when it stops.

    A field left at None takes the library's default (tandem_sampling_init):
    max_tokens 256, temperature 1 (0 is greedy), top_p 1 (off), top_k 0 (off),
    min_p 0 (off), repetition_penalty 1 (off) over the last penalty_last_n 64
    ids (-1: all), seed 0. Ranges are checked by the library, which raises
    TandemError naming the field; values the C types cannot hold raise
    ValueError here.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    """strings that end the output (not included in it)"""
    repetition_penalty: float | None = None
    penalty_last_n: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one string, not its characters
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        for s in self.stop:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
            if "\0" in s:
                raise ValueError(f"stop string {s!r} contains a NUL character")
        # what the C fields can hold: ctypes would wrap or truncate silently
        for name in ("max_tokens", "top_k", "penalty_last_n"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_int(name, getattr(self, name), INT32_MIN, INT32_MAX))
        if self.seed is not None:
            object.__setattr__(self, "seed", check_int("seed", self.seed, 0, UINT64_MAX))
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise TypeError(f"{name} must be a number, got {type(v).__name__}")
                object.__setattr__(self, name, float(v))
        object.__setattr__(self, "ignore_eos", bool(self.ignore_eos))

    def to_c(self) -> tuple[_lib.tandem_sampling, Any]:
        """The C struct, and what it points to (keep it alive until the call returns)."""
        s = _lib.new_sampling()
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "stop" or v is None:
                continue
            setattr(s, f.name, int(v) if f.name == "ignore_eos" else v)
        stops = (ctypes.c_char_p * max(1, len(self.stop)))(*(t.encode() for t in self.stop))
        if self.stop:
            s.stop = ctypes.cast(stops, ctypes.POINTER(ctypes.c_char_p))
            s.n_stop = len(self.stop)
        return s, stops


@dataclass(frozen=True)
class Token:
    """One generated token of a stream and the text it completed ("" when it
    completed none: a character split across tokens, text held back while it
    may begin a stop string, or an end-of-generation token)."""

    id: int
    text: str


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds of one request, measured by the bindings from its
    submission (queueing included)."""

    time_to_first_token: float | None
    """None when no token came (a request that failed or was cancelled first)"""
    total: float

    def decode_tokens_per_second(self, n_generated: int) -> float:
        """Tokens after the first over the time they took; 0 when undefined."""
        if self.time_to_first_token is None or n_generated < 2:
            return 0.0
        dt = self.total - self.time_to_first_token
        return (n_generated - 1) / dt if dt > 0 else 0.0


@dataclass(frozen=True)
class Completion:
    """A finished request.

    finish_reason: "stop" (an end-of-generation token or a stop string),
    "length" (max_tokens or the model's context), "cancelled" or "error"
    (then ``error`` says why; the rest of its batch is unaffected).
    """

    index: int
    """its position in the batch generate() was given"""
    prompt: str | list[int] | list[dict[str, str]]
    text: str
    token_ids: list[int]
    """the generated ids (text comes from them, less a stop string)"""
    prompt_token_ids: list[int]
    finish_reason: str
    timings: Timings
    error: TandemError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Stats:
    """An engine's counters since it opened (tandem_stats)."""

    requests_finished: int
    requests_failed: int
    prompt_tokens: int
    """prefilled, recomputation after preemption included"""
    generated_tokens: int
    preemptions: int
    steps: int
    run_seconds: float
    """inside tandem_step"""
    forward_seconds: float
    """of that, in the model"""
    kv_bytes_total: int
    kv_bytes_used: int
    kv_bytes_peak: int
    running: int
    queued: int
    pipeline_steps: int
    """pipelined (cpu-attn) steps, and the busy times of each resource in them"""
    pipeline_seconds: float
    device_busy_seconds: float
    d2h_busy_seconds: float
    h2d_busy_seconds: float
    cpu_busy_seconds: float
    kv_moves_to_host: int
    """mode hybrid: sequences moved from the device's KV pool to the host's, back, and the bytes copied"""
    kv_moves_to_device: int
    kv_moved_bytes: int
    host_decodes_held: int
    """mode hybrid with a profile: host-pool decodes the cost model held back from a step"""

    @classmethod
    def from_c(cls, s: _lib.tandem_stats) -> Stats:
        return cls(**{f.name: getattr(s, f.name) for f in fields(cls)})

    @property
    def overlap_efficiency(self) -> float | None:
        """The busiest resource's share of pipelined time (1: it never waited); None without pipelined steps."""
        if not self.pipeline_steps or self.pipeline_seconds <= 0:
            return None
        busiest = max(
            self.device_busy_seconds, self.d2h_busy_seconds, self.h2d_busy_seconds, self.cpu_busy_seconds
        )
        return busiest / self.pipeline_seconds
