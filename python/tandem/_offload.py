"""tune and plan: the hardware profile (tandem_tune) and the cost model's
prediction for a decode batch (tandem_plan), include/tandem.h.

Neither needs an engine. ctypes releases the GIL during both calls; tune's
progress callback takes it back for the Python callable it calls.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _lib
from ._engine import parse_size
from ._types import INT32_MAX, INT32_MIN, TandemError, check_int

# tandem_mode values of tandem_plan_result.chosen
_MODE_NAMES = {v: k for k, v in _lib.MODES.items()}

_ERR_CAP = 1024


def _require(name: str) -> Any:
    if not _lib.has(name):
        raise _lib.LibraryNotFoundError(
            f"{_lib.library_path()} (libtandem {_lib.lib().tandem_version().decode()}) has no {name}: "
            "it was built before hardware profiles (issue 7)"
        )
    return getattr(_lib.lib(), name)


def _string(name: str, value: Any, keep: list[bytes], path: bool = False) -> bytes:
    b = os.fsencode(value) if path else str(value).encode()
    if b"\0" in b:
        raise ValueError(f"{name} contains a NUL character")
    keep.append(b)
    return b


@dataclass(frozen=True)
class Plan:
    """The cost model's prediction for `batch` sequences of `ctx` cached
    tokens decoding on a profile's machine (tandem_plan_result)."""

    device_tok_s: float
    """mode device: every KV on the device, the batch capped by its KV room"""
    device_batch: int
    """the batch mode device runs (at most `batch`)"""
    cpu_attn_tok_s: float
    """mode cpu-attn: every KV on the host (0: they do not fit there)"""
    hybrid_tok_s: float
    """mode hybrid at its best split (or host_seqs' when given)"""
    hybrid_host_seqs: int
    """sequences attending on the CPU in that split"""
    hybrid_sub_batches: int
    chosen: str
    """the mode with the most tokens/s: 'device', 'cpu-attn' or 'hybrid'"""
    chosen_tok_s: float
    step_seconds: float
    """the chosen plan's predicted step and each resource's busy time in it"""
    device_busy_seconds: float
    link_busy_seconds: float
    cpu_busy_seconds: float
    search_seconds: float
    """what the search itself took"""

    @property
    def tokens_per_second(self) -> dict[str, float]:
        """Each mode's predicted decode tokens/s, by mode name."""
        return {"device": self.device_tok_s, "cpu-attn": self.cpu_attn_tok_s, "hybrid": self.hybrid_tok_s}

    @classmethod
    def from_c(cls, r: _lib.tandem_plan_result) -> Plan:
        return cls(
            device_tok_s=r.device_tok_s,
            device_batch=r.device_batch,
            cpu_attn_tok_s=r.cpu_attn_tok_s,
            hybrid_tok_s=r.hybrid_tok_s,
            hybrid_host_seqs=r.hybrid_host_seqs,
            hybrid_sub_batches=r.hybrid_sub_batches,
            chosen=_MODE_NAMES.get(r.chosen, str(r.chosen)),
            chosen_tok_s=r.chosen_tok_s,
            step_seconds=r.step_seconds,
            device_busy_seconds=r.device_busy_seconds,
            link_busy_seconds=r.link_busy_seconds,
            cpu_busy_seconds=r.cpu_busy_seconds,
            search_seconds=r.search_seconds,
        )


def plan(
    profile: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    batch: int = 64,
    ctx: int = 2048,
    gpu_mem: int | str | None = None,
    host_kv: int | str | None = None,
    host_seqs: int | None = None,
) -> Plan:
    """The cost model's prediction of each mode's decode tokens/s and the
    mode it would choose (tandem_plan; `tandem plan` on the command line).

    profile: a profile file from tune() / `tandem tune`, or a preset name
    ("T4", "A10G", "H100-PCIe", ...). model: a GGUF whose shapes are used
    (only its metadata is read), else $TANDEM_MODEL, else the default model.
    batch sequences of ctx cached tokens each. gpu_mem: device memory for
    weights, workspace and KV (default: the profile's); host_kv: host memory
    for KV (default: 90% of the profile's host memory); bytes or sizes such
    as "16G". host_seqs: evaluate hybrid with this many sequences on the CPU
    instead of searching. The library's errors (an unknown preset, batch 0)
    raise TandemError with its message.
    """
    fn = _require("tandem_plan")
    keep: list[bytes] = []
    q = _lib.new_plan_query()
    q.profile = _string("profile", profile, keep, path=True)
    if model is not None:
        q.model_path = _string("model", model, keep, path=True)
    # ranges are the library's to check (and to explain); only what a C int holds here
    q.batch = check_int("batch", batch, INT32_MIN, INT32_MAX)
    q.ctx = check_int("ctx", ctx, INT32_MIN, INT32_MAX)
    if gpu_mem is not None:
        q.gpu_mem_bytes = parse_size("gpu_mem", gpu_mem)
    if host_kv is not None:
        q.host_kv_bytes = parse_size("host_kv", host_kv)
    q.host_seqs = -1 if host_seqs is None else check_int("host_seqs", host_seqs, 0, INT32_MAX)
    r = _lib.tandem_plan_result()
    r.struct_size = ctypes.sizeof(r)
    err = ctypes.create_string_buffer(_ERR_CAP)
    st = fn(ctypes.byref(q), ctypes.byref(r), err, _ERR_CAP)
    if st != _lib.TANDEM_OK:
        raise TandemError(st, err.value.decode(errors="replace"))
    return Plan.from_c(r)


def tune(
    out: str | os.PathLike[str] = "profile.json",
    device: str = "auto",
    emu_gpu: str | None = None,
    emu_link: str | None = None,
    threads: int | None = None,
    model: str | os.PathLike[str] | None = None,
    progress: Callable[[str, float], object] | None = None,
) -> str:
    """Measures this machine and writes its hardware profile to `out`, the
    JSON that plan() and Engine(profile=...) read (tandem_tune; `tandem tune`
    on the command line). Takes seconds. Returns the path written.

    device: "auto" (a CUDA GPU, else the emulated device), "cuda" or "emu";
    emu_gpu and emu_link (device "emu" only): the GPU and link presets whose
    times the emulated device takes (default "H100-PCIe", "pcie5-x16").
    threads: the CPU attention's most threads (default: every core). model:
    a GGUF whose layer shapes are measured too. progress: called as
    progress(stage, fraction) as each stage starts and ends, fraction 0..1
    of the whole, on the calling thread; an exception it raises is raised
    again when the measurement ends (which it cannot interrupt).
    """
    fn = _require("tandem_tune")
    keep: list[bytes] = []
    c = _lib.new_tune_config()
    if device not in _lib.DEVICES:  # "cpu" goes through: the library says why it cannot be
        raise ValueError(f"device {device!r}: one of auto, cuda, emu")
    c.device = _lib.DEVICES[device]
    if emu_gpu is not None:
        c.emu_gpu = _string("emu_gpu", emu_gpu, keep)
    if emu_link is not None:
        c.emu_link = _string("emu_link", emu_link, keep)
    if threads is not None:
        c.threads = check_int("threads", threads, 1, INT32_MAX)
    if model is not None:
        c.model_path = _string("model", model, keep, path=True)
    path = _string("out", out, keep, path=True)

    raised: list[BaseException] = []

    def on_progress(_user: Any, stage: bytes | None, fraction: float) -> None:
        if raised:
            return
        try:
            progress(stage.decode(errors="replace") if stage else "", fraction)  # type: ignore[misc]
        except BaseException as e:  # noqa: BLE001 - it cannot cross the C frames: raised after
            raised.append(e)

    callback = _lib.PROGRESS(on_progress)  # alive until the call returns
    if progress is not None:
        c.progress = callback
    err = ctypes.create_string_buffer(_ERR_CAP)
    st = fn(ctypes.byref(c), path, err, _ERR_CAP)
    if raised:
        raise raised[0]
    if st != _lib.TANDEM_OK:
        raise TandemError(st, err.value.decode(errors="replace"))
    return os.fsdecode(path)
