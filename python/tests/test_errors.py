"""Failures come back as exceptions that carry the library's message; the
library is found (or not) where python/README.md says; the ctypes structs
are the header's."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tandem
from tandem import _lib
from conftest import ENGINE_ARGS, REPO


def test_missing_model(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "model.gguf"
    with pytest.raises(tandem.TandemError) as info:
        tandem.Engine(path, **ENGINE_ARGS)
    assert str(path) in str(info.value) and str(path) in info.value.message
    assert info.value.status_name == "TANDEM_ERR_IO"


def test_malformed_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(tandem.TandemError, match="bad.gguf") as info:
        tandem.Engine(bad, **ENGINE_ARGS)
    assert info.value.status_name == "TANDEM_ERR_FORMAT"


@pytest.mark.parametrize(
    "params, field",
    [
        (tandem.SamplingParams(temperature=-1), "temperature"),
        (tandem.SamplingParams(temperature=float("nan")), "temperature"),
        (tandem.SamplingParams(top_p=0), "top_p"),
        (tandem.SamplingParams(top_k=-2), "top_k"),
        (tandem.SamplingParams(min_p=1.5), "min_p"),
        (tandem.SamplingParams(max_tokens=0), "max_tokens"),
        (tandem.SamplingParams(repetition_penalty=0), "repetition_penalty"),
        (tandem.SamplingParams(stop=["x"] * 65), "n_stop"),
    ],
)
def test_bad_sampling_parameters(engine: tandem.Engine, params: tandem.SamplingParams, field: str) -> None:
    with pytest.raises(tandem.TandemError, match=field) as info:
        engine.generate(["Once upon a time", "Water boils at"], params)
    assert info.value.status_name == "TANDEM_ERR_INVALID_ARGUMENT"
    with pytest.raises(tandem.TandemError, match=field):
        engine.stream("Once upon a time", params)
    assert engine._state.requests == {}  # nothing left queued
    assert engine.stats().queued == 0


def test_values_the_c_types_cannot_hold() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        tandem.SamplingParams(max_tokens=2**32 + 5)  # ctypes would make it 5
    with pytest.raises(ValueError, match="seed"):
        tandem.SamplingParams(seed=-1)
    with pytest.raises(ValueError, match="NUL"):
        tandem.SamplingParams(stop=["a\0b"])
    with pytest.raises(TypeError, match="top_k"):
        tandem.SamplingParams(top_k="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temperature"):
        tandem.SamplingParams(temperature="hot")  # type: ignore[arg-type]
    assert tandem.SamplingParams(stop="\n").stop == ("\n",)


def test_bad_engine_arguments(engine: tandem.Engine) -> None:
    if _lib.config_has("profile"):  # passed on: the library reads it
        missing = "/nonexistent/profile.json"
        with pytest.raises(tandem.TandemError, match=missing):
            tandem.Engine(engine.model, device="emu", profile=missing, **ENGINE_ARGS)
    else:
        with pytest.raises(ValueError, match="issue 7"):
            tandem.Engine(profile="h100.json")
    with pytest.raises(ValueError, match="device"):
        tandem.Engine(device="tpu")
    with pytest.raises(ValueError, match="mode"):
        tandem.Engine(mode="cpu_attn")
    with pytest.raises(ValueError, match="kv_budget"):
        tandem.Engine(kv_budget="lots")
    with pytest.raises(ValueError, match="kv_budget"):
        tandem.Engine(kv_budget=0)
    with pytest.raises(tandem.TandemError, match="emu"):  # the library's own check
        tandem.Engine(device="cpu", emu_gpu="H100-PCIe")
    with pytest.raises(ValueError, match="token id"):
        engine.detokenize([2**31])
    with pytest.raises(tandem.TandemError):
        engine.detokenize([engine.n_vocab + 5])


def test_cuda_without_a_gpu_is_refused_plainly(model: str) -> None:
    try:
        e = tandem.Engine(model, device="cuda", kv_budget="32M")
    except tandem.TandemError as err:
        assert err.status_name == "TANDEM_ERR_UNSUPPORTED" and "cuda" in err.message
    else:  # a machine with a GPU
        assert e.device.startswith("cuda")
        e.close()


def test_closed_engine(model: str) -> None:
    e = tandem.Engine(model, **ENGINE_ARGS)
    s = e.stream("Once upon a time", tandem.SamplingParams(max_tokens=50, temperature=0))
    next(s)
    e.close()
    e.close()  # idempotent
    assert e.closed and "closed" in repr(e)
    with pytest.raises(ValueError, match="closed"):
        e.generate("Once upon a time")
    with pytest.raises(ValueError, match="closed"):
        list(s)  # its request went with the engine
    s.close()  # nothing left to free


def _load_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import tandem; print(tandem.library_path()); print(tandem.library_version())"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO / "python",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_library_lookup(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TANDEM_LIBRARY"}
    # set: the only place looked at, and the error names it
    missing = tmp_path / "nowhere" / "libtandem.so"
    p = _load_in_subprocess({**env, "TANDEM_LIBRARY": str(missing)})
    assert p.returncode != 0
    assert "LibraryNotFoundError" in p.stderr and str(missing) in p.stderr and "TANDEM_LIBRARY" in p.stderr
    # a file that is no library: the loader's reason
    junk = tmp_path / "libtandem.so"
    junk.write_text("not an ELF file")
    p = _load_in_subprocess({**env, "TANDEM_LIBRARY": str(junk)})
    assert p.returncode != 0 and str(junk) in p.stderr
    # the one this suite uses, through the variable
    lib = tandem.library_path()
    p = _load_in_subprocess({**env, "TANDEM_LIBRARY": lib})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [lib, tandem.library_version()]
    # unset: the checkout's build tree
    if (REPO / "build" / "libtandem.so").exists():
        p = _load_in_subprocess(env)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split()[0] == str(REPO / "build" / "libtandem.so")


LAYOUT_C = """
#include <stddef.h>
#include <stdio.h>
#include "tandem.h"
#define F(s, f) printf(#s " " #f " %zu %zu\\n", offsetof(s, f), sizeof(((s *)0)->f));
#define S(s) printf(#s " size %zu\\n", sizeof(s));
int main(void) {
    %s
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to read the header's layout")
def test_structs_match_the_header(tmp_path: Path) -> None:
    structs = [
        _lib.tandem_config,
        _lib.tandem_sampling,
        _lib.tandem_message,
        _lib.tandem_callbacks,
        _lib.tandem_stats,
        _lib.tandem_tune_config,
        _lib.tandem_plan_query,
        _lib.tandem_plan_result,
    ]
    lines = "\n    ".join(
        [f"S({s.__name__})" for s in structs] + [f"F({s.__name__}, {f[0]})" for s in structs for f in s._fields_]
    )
    src = tmp_path / "layout.c"
    src.write_text(textwrap.dedent(LAYOUT_C).replace("%s", lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c11", "-I", str(REPO / "include"), str(src), "-o", str(exe)], check=True)
    c = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    py = [f"{s.__name__} size {ctypes.sizeof(s)}" for s in structs]
    for s in structs:
        py += [f"{s.__name__} {name} {getattr(s, name).offset} {getattr(s, name).size}" for name, *_ in s._fields_]
    differ = sorted(set(c) ^ set(py))
    assert not differ, (
        "python/tandem/_lib.py no longer mirrors include/tandem.h (fields added to the header go there,"
        " and into the dataclasses of _types.py); header vs mirror:\n  "
        + "\n  ".join(("header: " if line in c else "mirror: ") + line for line in differ)
    )


def test_sized_initializers() -> None:
    """The library's tandem_X_init_sized: this mirror is the header, so
    struct_size is its size; and the library's own size is what the
    runtime check (config_has) reads."""
    lib = _lib.lib()
    for cls, new in (
        (_lib.tandem_config, _lib.new_config),
        (_lib.tandem_sampling, _lib.new_sampling),
        (_lib.tandem_tune_config, _lib.new_tune_config),
        (_lib.tandem_plan_query, _lib.new_plan_query),
    ):
        assert new().struct_size == ctypes.sizeof(cls)
        assert _lib._library_size(cls.__name__) == ctypes.sizeof(cls)
        # more room than the library's struct: it writes its own size and says so
        buf = ctypes.create_string_buffer(b"\xab" * (ctypes.sizeof(cls) + 64), ctypes.sizeof(cls) + 64)
        getattr(lib, cls.__name__ + "_init_sized")(ctypes.cast(buf, ctypes.POINTER(cls)), len(buf))
        assert cls.from_buffer(buf).struct_size == ctypes.sizeof(cls)
        assert buf.raw[ctypes.sizeof(cls) :] == b"\xab" * 64
    assert _lib.config_has("profile")
    s, q = _lib.new_sampling(), _lib.new_plan_query()
    assert (s.max_tokens, s.penalty_last_n, q.batch, q.ctx, q.host_seqs) == (256, 64, 64, 2048, -1)


def test_an_older_mirror_opens_an_engine(model: str) -> None:
    """Bindings written against an older header (a tandem_config without
    profile): the library writes and reads only the bytes they have."""

    class old_config(ctypes.Structure):
        _fields_ = [f for f in _lib.tandem_config._fields_ if f[0] != "profile"]

    n = ctypes.sizeof(old_config)
    assert n == _lib.tandem_config.profile.offset
    buf = ctypes.create_string_buffer(b"\xab" * (n + 64), n + 64)
    lib = _lib.lib()
    lib.tandem_config_init_sized(ctypes.cast(buf, ctypes.POINTER(_lib.tandem_config)), n)
    assert buf.raw[n:] == b"\xab" * 64  # where profile would be: not a pointer the library may read
    cfg = old_config.from_buffer(buf)
    assert cfg.struct_size == n and cfg.device == 0 and cfg.model_path is None
    path = os.fsencode(model)
    cfg.model_path = path
    cfg.kv_budget_bytes = 32 << 20
    cfg.device = _lib.DEVICES["cpu"]
    handle = _lib.engine_p()
    st = lib.tandem_engine_open(ctypes.cast(buf, ctypes.POINTER(_lib.tandem_config)), ctypes.byref(handle))
    try:
        assert st == _lib.TANDEM_OK, lib.tandem_engine_errmsg(handle)
        assert lib.tandem_engine_device(handle) == b"cpu"
    finally:
        lib.tandem_engine_close(handle)


def test_without_sized_initializers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library from before tandem_X_init_sized: the structs are initialized
    through tandem_X_init inside a buffer of the library's size."""
    real = _lib.has
    monkeypatch.setattr(_lib, "has", lambda name: not name.endswith("_init_sized") and real(name))
    monkeypatch.setattr(_lib, "_lib_sizes", {})
    c = _lib.new_config()
    assert c.struct_size == ctypes.sizeof(_lib.tandem_config) and c.device == 0
    s = _lib.new_sampling()
    assert s.struct_size == ctypes.sizeof(_lib.tandem_sampling) and s.max_tokens == 256
    assert _lib.config_has("profile")
