"""Engine and Stream: a tandem_engine and its requests, as Python objects.

Rules of the C API (include/tandem.h) this module keeps:

- Calls on one engine and its requests must not overlap: every one is made
  under the engine's lock, so an Engine may be shared by threads. The lock is
  taken per scheduler step, not per generate() call, so requests submitted by
  several threads run in the same batches (each step advances all of them).
- Callbacks run on the thread inside tandem_step and may call nothing on the
  engine but tandem_cancel: ours only record tokens and finishes in Python
  (requests are told apart by their handle's address, so not even
  tandem_request_user is called); results are read and requests freed after
  the step returns.
- A request belongs to its engine until tandem_request_free; a Stream
  dropped unfinished is freed at the engine's next call (its finalizer may
  run inside a callback, where freeing is not allowed), and
  tandem_engine_close frees whatever is left.
- ctypes releases the GIL around every C call, so a step runs while other
  Python threads go on; the callbacks take the GIL back for their few lines.
"""

from __future__ import annotations

import ctypes
import numbers
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

from . import _lib
from ._lib import FINISH_ERROR, TANDEM_ERR_INTERNAL, TANDEM_ERR_LIMIT, TANDEM_OK
from ._types import (
    INT32_MAX,
    INT32_MIN,
    Completion,
    SamplingParams,
    Stats,
    TandemError,
    Timings,
    Token,
    check_int,
)

# A prompt: text (tokenized with the model's BOS rule, control tokens
# recognised) or token ids.
Prompt = Union[str, Sequence[int]]
Message = Mapping[str, str]

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)b?\s*", re.IGNORECASE)
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(name: str, value: int | str) -> int:
    """Bytes from an int or a string like the CLI's: "4G", "512M", "1.5g", "1048576"."""
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if not m:
            raise ValueError(f"{name}: cannot read {value!r} as a size (e.g. 4G, 512M, 1048576)")
        value = int(float(m[1]) * _UNIT[m[2].lower()])
    return check_int(name, value, 1, 2**63 - 1)


def _address(p: Any) -> int:
    return ctypes.cast(p, ctypes.c_void_p).value or 0


class _Request:
    """One C request while it is live, and what the callbacks saw of it."""

    __slots__ = (
        "handle",
        "key",
        "prompt",
        "index",
        "t_submit",
        "t_first",
        "t_finish",
        "finished",
        "cancelled",
        "batch",
        "tokens",
    )

    def __init__(self, handle: Any, prompt: Any, index: int, t_submit: float, batch: _Batch | None) -> None:
        self.handle = handle
        self.key = _address(handle)
        self.prompt = prompt
        self.index = index
        self.t_submit = t_submit
        self.t_first: float | None = None
        self.t_finish: float | None = None
        self.finished = False  # on_finish came
        self.cancelled = False  # tandem_cancel called (its on_finish comes with the next step)
        self.batch = batch  # generate()'s, counting its unfinished requests; None: a stream's
        self.tokens: deque[Token] | None = deque() if batch is None else None


class _Batch:
    """The requests of one generate() call: how many have not finished."""

    __slots__ = ("unfinished",)

    def __init__(self) -> None:
        self.unfinished = 0


class _EngineState:
    """What the engine's finalizer needs: everything but the Engine object."""

    def __init__(self, lib: ctypes.CDLL, handle: Any, keep: list[bytes]) -> None:
        self.lib = lib
        self.handle = handle
        self.keep = keep  # the strings the config pointed to
        self.lock = threading.RLock()
        self.closed = False
        self.requests: dict[int, _Request] = {}
        self.discarded: deque[_Request] = deque()  # dropped streams: free at the next call
        self.callback_error: BaseException | None = None
        self.on_token_c = _lib.ON_TOKEN(self._on_token)
        self.on_finish_c = _lib.ON_FINISH(self._on_finish)
        self.callbacks = _lib.tandem_callbacks(self.on_token_c, self.on_finish_c, None)

    # Callbacks: inside tandem_step, on its thread, with the lock held.
    def _on_token(self, _user: Any, r: Any, token: int, text: int | None, n: int) -> None:
        try:
            req = self.requests.get(_address(r))
            if req is None:
                return
            if req.t_first is None:
                req.t_first = time.perf_counter()
            if req.tokens is not None:
                chunk = ctypes.string_at(text, n).decode("utf-8", "replace") if n else ""
                req.tokens.append(Token(token, chunk))
        except BaseException as e:  # ctypes would print and drop it: re-raised after the step
            self.callback_error = self.callback_error or e

    def _on_finish(self, _user: Any, r: Any) -> None:
        try:
            req = self.requests.get(_address(r))
            if req is not None:
                req.t_finish = time.perf_counter()
                req.finished = True
                if req.batch is not None:
                    req.batch.unfinished -= 1
        except BaseException as e:
            self.callback_error = self.callback_error or e

    def discard(self, req: _Request) -> None:
        """A Stream's finalizer: no C call here (it may run inside a callback)."""
        self.discarded.append(req)

    def free(self, req: _Request) -> None:
        """Releases a request (lock held, outside callbacks); cancels it when unfinished."""
        if self.requests.get(req.key) is req:
            del self.requests[req.key]
            self.lib.tandem_request_free(self.handle, req.handle)

    def free_discarded(self) -> None:
        while self.discarded:
            self.free(self.discarded.popleft())

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.requests.clear()
            self.discarded.clear()
            self.lib.tandem_engine_close(self.handle)  # frees the requests left


class Engine:
    """A model loaded by libtandem, ready to run batches of requests.

    Arguments left at None take the library's defaults (tandem_config_init):
    model: a GGUF file, else $TANDEM_MODEL, else the default model
    (scripts/fetch-model); threads: every core; kv_budget: a quarter of
    memory, at most 4 GiB (bytes, or a size such as "512M").
    device: "auto", "cpu", "cuda", "emu"; mode: "auto", "device", "cpu-attn",
    "hybrid" (see tandem_config in include/tandem.h). The keyword-only
    arguments map to the other tandem_config fields.

    profile: a hardware profile (a file from tandem tune, or a preset name)
    for the cost model (tandem_config.profile, issue 7); with a library that
    has no such field, passing one raises ValueError.

    Close it with close() or a with block; the finalizer closes it otherwise.
    An Engine may be used from several threads (calls are serialized); separate
    engines run in parallel.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        mode: str = "auto",
        threads: int | None = None,
        kv_budget: int | str | None = None,
        profile: str | os.PathLike[str] | None = None,
        *,
        max_batch: int | None = None,
        step_tokens: int | None = None,
        weights: str | None = None,
        chat_template: str | None = None,
        device_kv: int | str | None = None,
        trace: str | os.PathLike[str] | None = None,
        emu_gpu: str | None = None,
        emu_link: str | None = None,
    ) -> None:
        lib = _lib.lib()
        if profile is not None and not _lib.config_has("profile"):
            raise ValueError(
                f"profile: this libtandem ({lib.tandem_version().decode()}) has no tandem_config.profile; "
                "hardware profiles come with issue 7"
            )
        cfg = _lib.new_config()
        keep: list[bytes] = []

        def string(name: str, value: Any, path: bool = False) -> bytes:
            b = os.fsencode(value) if path else str(value).encode()
            if b"\0" in b:
                raise ValueError(f"{name} contains a NUL character")
            keep.append(b)
            return b

        def choice(name: str, value: str, names: dict[str, int]) -> int:
            if value not in names:
                raise ValueError(f"{name} {value!r}: one of {', '.join(names)}")
            return names[value]

        self.model = None if model is None else os.fspath(model)
        if model is not None:
            cfg.model_path = string("model", model, path=True)
        cfg.device = choice("device", device, _lib.DEVICES)
        cfg.mode = choice("mode", mode, _lib.MODES)
        if weights is not None:
            cfg.weights = choice("weights", weights, _lib.WEIGHTS)
        if threads is not None:
            cfg.threads = check_int("threads", threads, 1, INT32_MAX)
        if max_batch is not None:
            cfg.max_batch = check_int("max_batch", max_batch, 1, INT32_MAX)
        if step_tokens is not None:
            cfg.step_tokens = check_int("step_tokens", step_tokens, 1, INT32_MAX)
        if kv_budget is not None:
            cfg.kv_budget_bytes = parse_size("kv_budget", kv_budget)
        if device_kv is not None:
            cfg.device_kv_bytes = parse_size("device_kv", device_kv)
        if chat_template is not None:
            cfg.chat_template = string("chat_template", chat_template)
        if trace is not None:
            cfg.trace_path = string("trace", trace, path=True)
        if emu_gpu is not None:
            cfg.emu_gpu = string("emu_gpu", emu_gpu)
        if emu_link is not None:
            cfg.emu_link = string("emu_link", emu_link)
        self.profile = None if profile is None else os.fspath(profile)
        if profile is not None:
            cfg.profile = string("profile", profile, path=True)

        handle = _lib.engine_p()
        st = lib.tandem_engine_open(ctypes.byref(cfg), ctypes.byref(handle))
        if st != TANDEM_OK:
            # a handle that only says why (NULL when memory ran out)
            msg = lib.tandem_engine_errmsg(handle).decode(errors="replace") if handle else "out of memory"
            lib.tandem_engine_close(handle)
            raise TandemError(st, msg)
        self._state = _EngineState(lib, handle, keep)
        self._finalizer = weakref.finalize(self, self._state.close)

    # ---- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Closes the engine and frees its requests; unfinished streams end. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._state.closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<tandem.Engine closed>"
        return f"<tandem.Engine model={self.model!r} device={self.device!r}>"

    def _locked(self) -> _Locked:
        """`with self._locked() as st:` holds the engine for one call."""
        return _Locked(self._state)

    # ---- information ---------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the engine runs, e.g. "cpu", or why auto fell back to it."""
        with self._locked() as st:
            return st.lib.tandem_engine_device(st.handle).decode(errors="replace")

    @property
    def n_vocab(self) -> int:
        with self._locked() as st:
            return int(st.lib.tandem_n_vocab(st.handle))

    @property
    def bos_token_id(self) -> int | None:
        with self._locked() as st:
            t = st.lib.tandem_token_bos(st.handle)
        return None if t < 0 else int(t)

    @property
    def eos_token_id(self) -> int | None:
        with self._locked() as st:
            t = st.lib.tandem_token_eos(st.handle)
        return None if t < 0 else int(t)

    @property
    def chat_template(self) -> str | None:
        """The chat template in use ("chatml", "llama3", ...), None when none."""
        with self._locked() as st:
            return st.lib.tandem_chat_template(st.handle).decode() or None

    def stats(self) -> Stats:
        with self._locked() as st:
            s = _lib.tandem_stats()
            s.struct_size = ctypes.sizeof(s)
            self._check(st, st.lib.tandem_engine_stats(st.handle, ctypes.byref(s)))
            return Stats.from_c(s)

    # ---- tokenizer -------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Token ids of text. add_bos None: the model's rule. parse_special:
        recognise control tokens such as "<|im_start|>"."""
        b = text.encode()
        bos = -1 if add_bos is None else int(bool(add_bos))
        cap = len(b) + 2
        with self._locked() as st:
            while True:
                ids = (ctypes.c_int32 * cap)()
                n = ctypes.c_size_t()
                rc = st.lib.tandem_tokenize(st.handle, b, len(b), bos, int(parse_special), ids, cap, ctypes.byref(n))
                if rc == TANDEM_ERR_LIMIT and n.value > cap:
                    cap = n.value  # the count the whole text needs
                    continue
                self._check(st, rc)
                return ids[: n.value]

    def detokenize(self, ids: Sequence[int]) -> str:
        """UTF-8 text of token ids (control tokens are not rendered)."""
        arr = _id_array(ids)
        cap = 8 * len(arr) + 16
        with self._locked() as st:
            while True:
                out = ctypes.create_string_buffer(cap)
                n = ctypes.c_size_t()
                rc = st.lib.tandem_detokenize(st.handle, arr, len(ids), out, cap, ctypes.byref(n))
                if rc == TANDEM_ERR_LIMIT and n.value > cap:
                    cap = n.value
                    continue
                self._check(st, rc)
                return out.raw[: n.value].decode("utf-8", "replace")

    # ---- generation ------------------------------------------------------------

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Runs prompts (one, or a batch) to completion; results in their order.

        A prompt is text or a list of token ids; sampling is one
        SamplingParams for all, or one per prompt. Bad parameters raise
        TandemError before anything runs; a request that cannot run (a prompt
        longer than the context or the KV cache) comes back with
        finish_reason "error" and the rest of the batch is unaffected.
        """
        one = isinstance(prompts, str) or (_is_ids(prompts) and len(prompts) > 0)
        batch = [prompts] if one else list(prompts)
        return self._generate(batch, sampling, chat=False)

    def chat(
        self,
        conversations: Sequence[Sequence[Message]],
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Like generate, with conversations ([{"role": "user", "content": ...}, ...])
        rendered by the engine's chat template; each completion is the assistant's reply."""
        return self._generate(list(conversations), sampling, chat=True)

    def stream(self, prompt: Prompt, sampling: SamplingParams | None = None) -> Stream:
        """Submits one request and returns an iterator of its Tokens as they are generated.

        Iterating it runs the engine a step at a time; other requests on the
        engine (other streams, other threads' batches) advance in the same
        steps and keep their tokens until read.
        """
        with self._locked() as st:
            req = self._submit(st, prompt, sampling or SamplingParams(), 0, chat=False, batch=None)
        return Stream(self, req)

    def _generate(self, prompts: list[Any], sampling: Any, chat: bool) -> list[Completion]:
        if sampling is None or isinstance(sampling, SamplingParams):
            params = [sampling or SamplingParams()] * len(prompts)
        else:
            params = list(sampling)
            if len(params) != len(prompts):
                raise ValueError(f"{len(params)} sampling parameters for {len(prompts)} prompts")
        reqs: list[_Request] = []
        group = _Batch()
        try:
            with self._locked() as st:
                for i, (p, s) in enumerate(zip(prompts, params)):
                    reqs.append(self._submit(st, p, s, i, chat=chat, batch=group))
                    group.unfinished += 1
            self._run_until(lambda: group.unfinished == 0)
            with self._locked() as st:
                return [self._completion(st, r) for r in reqs]
        finally:  # done, or an exception (a KeyboardInterrupt between steps): unfinished ones are cancelled
            with self._state.lock:
                for r in reqs:
                    self._state.free(r)  # nothing when the engine was closed meanwhile

    def _submit(
        self, st: _EngineState, prompt: Any, s: SamplingParams, index: int, chat: bool, batch: _Batch | None
    ) -> _Request:
        if not isinstance(s, SamplingParams):
            raise TypeError(f"sampling must be SamplingParams, got {type(s).__name__}")
        cs, _keepalive = s.to_c()  # what cs points to (stop strings), alive until the call returns
        out = _lib.request_p()
        t0 = time.perf_counter()
        if chat:
            msgs = _messages(prompt)
            rc = st.lib.tandem_submit_chat(st.handle, msgs, len(prompt), ctypes.byref(cs), None, ctypes.byref(out))
        elif isinstance(prompt, str):
            b = prompt.encode()
            rc = st.lib.tandem_submit_text(st.handle, b, len(b), ctypes.byref(cs), None, ctypes.byref(out))
        elif _is_ids(prompt):
            ids = _id_array(prompt)
            rc = st.lib.tandem_submit_tokens(st.handle, ids, len(prompt), ctypes.byref(cs), None, ctypes.byref(out))
            prompt = list(prompt)
        else:
            raise TypeError(f"a prompt is a str or a sequence of token ids, got {type(prompt).__name__}")
        self._check(st, rc)
        req = _Request(out, prompt, index, t0, batch)
        st.requests[req.key] = req
        return req

    def _step(self, st: _EngineState, done: Any) -> None:
        """One scheduler step (lock held), unless done() already holds."""
        if done():
            return
        busy = ctypes.c_int(0)
        rc = st.lib.tandem_step(st.handle, ctypes.byref(st.callbacks), ctypes.byref(busy))
        err, st.callback_error = st.callback_error, None
        if err is not None:
            raise err
        self._check(st, rc)
        if not busy.value and not done():
            raise TandemError(TANDEM_ERR_INTERNAL, "the engine is idle but requests have not finished")

    def _run_until(self, done: Any) -> None:
        # the lock per step: other threads' calls get in between
        while not done():
            with self._locked() as st:
                self._step(st, done)

    def _completion(self, st: _EngineState, req: _Request) -> Completion:
        """Reads a finished request (lock held, outside callbacks)."""
        lib, h = st.lib, req.handle
        finish = lib.tandem_request_finish(h)
        n = ctypes.c_size_t()
        p = lib.tandem_request_text(h, ctypes.byref(n))
        text = ctypes.string_at(p, n.value).decode("utf-8", "replace") if n.value else ""
        n_prompt, n_gen = ctypes.c_size_t(), ctypes.c_size_t()
        ids = lib.tandem_request_tokens(h, ctypes.byref(n_prompt), ctypes.byref(n_gen))
        all_ids = ids[: n_prompt.value + n_gen.value] if ids else []
        error = None
        if finish == FINISH_ERROR:
            error = TandemError(lib.tandem_request_status(h), lib.tandem_request_error(h).decode(errors="replace"))
        t_end = req.t_finish if req.t_finish is not None else time.perf_counter()
        return Completion(
            index=req.index,
            prompt=req.prompt,
            text=text,
            token_ids=all_ids[n_prompt.value :],
            prompt_token_ids=all_ids[: n_prompt.value],
            finish_reason=lib.tandem_finish_name(finish).decode(),
            timings=Timings(None if req.t_first is None else req.t_first - req.t_submit, t_end - req.t_submit),
            error=error,
        )

    @staticmethod
    def _check(st: _EngineState, rc: int) -> None:
        if rc != TANDEM_OK:
            raise TandemError(rc, st.lib.tandem_engine_errmsg(st.handle).decode(errors="replace"))


class _Locked:
    """The engine's lock, held for one call; refuses a closed engine and first
    frees the requests of dropped streams."""

    __slots__ = ("st",)

    def __init__(self, st: _EngineState) -> None:
        self.st = st

    def __enter__(self) -> _EngineState:
        self.st.lock.acquire()
        if self.st.closed:
            self.st.lock.release()
            raise ValueError("the engine is closed")
        self.st.free_discarded()
        return self.st

    def __exit__(self, *exc: object) -> None:
        self.st.lock.release()


class Stream:
    """The tokens of one request, as they are generated (Engine.stream).

    Iterating yields Token(id, text); it ends when the request finishes (the
    texts then concatenate to result.text) and raises TandemError when the
    request failed. cancel() ends it early (result.finish_reason
    "cancelled"); close(), or leaving a with block, drops it.
    """

    def __init__(self, engine: Engine, req: _Request) -> None:
        self._engine = engine
        self._req = req
        self.result: Completion | None = None
        """the finished request, once iteration has reached its end"""
        self._finalizer = weakref.finalize(self, engine._state.discard, req)

    def __iter__(self) -> Iterator[Token]:
        return self

    def __next__(self) -> Token:
        req = self._req
        assert req.tokens is not None
        while True:
            if req.tokens:
                return req.tokens.popleft()
            if self.result is not None:
                if self.result.error is not None:
                    raise self.result.error
                raise StopIteration
            if not self._finalizer.alive:
                raise ValueError("the stream is closed")
            with self._engine._locked() as st:
                if req.finished:
                    self.result = self._engine._completion(st, req)
                    self._finalizer.detach()
                    st.free(req)
                else:
                    self._engine._step(st, lambda: req.finished or bool(req.tokens))

    def cancel(self) -> None:
        """Ends the request; its tokens so far stay readable, then iteration stops. Idempotent."""
        req = self._req
        if self.result is not None or req.finished or req.cancelled:
            return
        with self._engine._locked() as st:
            if not (req.finished or req.cancelled):
                self._engine._check(st, st.lib.tandem_cancel(st.handle, req.handle))
                req.cancelled = True

    def close(self) -> None:
        """Drops the request (cancelled when unfinished) and its unread tokens. Idempotent."""
        if self._finalizer.detach() is not None:
            assert self._req.tokens is not None
            self._req.tokens.clear()
            st = self._engine._state
            with st.lock:
                st.free(self._req)  # nothing when the engine was closed meanwhile

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_ids(x: Any) -> bool:
    """A sequence of token ids (possibly empty), not text."""
    return (
        isinstance(x, Sequence)
        and not isinstance(x, (str, bytes))
        and all(isinstance(t, numbers.Integral) for t in x)
    )


def _id_array(ids: Sequence[int]) -> Any:
    for t in ids:
        check_int("token id", t, INT32_MIN, INT32_MAX)
    return (ctypes.c_int32 * max(1, len(ids)))(*ids)


def _messages(conv: Sequence[Message]) -> Any:
    """A tandem_message array (ctypes keeps the strings its fields point to)."""
    arr = (_lib.tandem_message * max(1, len(conv)))()
    for m, msg in zip(arr, conv):
        role, content = msg["role"].encode(), msg["content"].encode()
        if b"\0" in role:
            raise ValueError("a message role contains a NUL character")
        m.role, m.content, m.content_len = role, content, len(content)
    return arr
