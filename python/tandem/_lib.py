"""Finding and loading libtandem, and the ctypes mirror of include/tandem.h.

Everything here follows the header exactly: the structs field by field (the
``struct_size`` fields included: the library reads only the fields a caller
says it knows), and an argtypes/restype pair for every function the package
calls. Nothing else of the library is used.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any

# The header this mirror was written against. The library's major version
# must match; a newer minor only appends fields and functions.
HEADER_VERSION = (0, 1, 0)

LIBRARY_ENV = "TANDEM_LIBRARY"
LIBRARY_NAME = "libtandem.so"

# ---- status, enums ---------------------------------------------------------

TANDEM_OK = 0
TANDEM_ERR_INVALID_ARGUMENT = 1
TANDEM_ERR_LIMIT = 4
TANDEM_ERR_INTERNAL = 10

DEVICES = {"auto": 0, "cpu": 1, "cuda": 2, "emu": 3}  # tandem_device
MODES = {"auto": 0, "device": 1, "cpu-attn": 2, "hybrid": 3}  # tandem_mode
WEIGHTS = {"bf16": 0, "f32": 1}  # tandem_weights

FINISH_NONE = 0
FINISH_STOP = 1
FINISH_LENGTH = 2
FINISH_ERROR = 3
FINISH_CANCELLED = 4

# ---- structs ---------------------------------------------------------------


class tandem_engine(Structure):
    """Opaque."""


class tandem_request(Structure):
    """Opaque."""


engine_p = POINTER(tandem_engine)
request_p = POINTER(tandem_request)


class tandem_config(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("model_path", c_char_p),
        ("threads", c_int),
        ("kv_budget_bytes", c_size_t),
        ("max_batch", c_int),
        ("step_tokens", c_int),
        ("weights", c_int),  # tandem_weights
        ("device", c_int),  # tandem_device
        ("mode", c_int),  # tandem_mode
        ("chat_template", c_char_p),
        ("trace_path", c_char_p),
        ("device_kv_bytes", c_size_t),
        ("emu_gpu", c_char_p),
        ("emu_link", c_char_p),
        ("profile", c_char_p),  # a library without it says so by a smaller struct_size
    ]


class tandem_sampling(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("max_tokens", c_int32),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("repetition_penalty", c_float),
        ("penalty_last_n", c_int32),
        ("seed", c_uint64),
        ("stop", POINTER(c_char_p)),
        ("n_stop", c_int32),
        ("ignore_eos", c_int),
    ]


class tandem_message(Structure):
    _fields_ = [
        ("role", c_char_p),
        ("content", c_char_p),
        ("content_len", c_size_t),
    ]


# The text argument is a pointer to len bytes that need not end in NUL: a
# c_void_p, read with ctypes.string_at.
ON_TOKEN = CFUNCTYPE(None, c_void_p, request_p, c_int32, c_void_p, c_size_t)
ON_FINISH = CFUNCTYPE(None, c_void_p, request_p)


class tandem_callbacks(Structure):
    _fields_ = [
        ("on_token", ON_TOKEN),
        ("on_finish", ON_FINISH),
        ("user_data", c_void_p),
    ]


class tandem_stats(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("requests_finished", c_uint64),
        ("requests_failed", c_uint64),
        ("prompt_tokens", c_uint64),
        ("generated_tokens", c_uint64),
        ("preemptions", c_uint64),
        ("steps", c_uint64),
        ("run_seconds", c_double),
        ("forward_seconds", c_double),
        ("kv_bytes_total", c_size_t),
        ("kv_bytes_used", c_size_t),
        ("kv_bytes_peak", c_size_t),
        ("running", c_uint32),
        ("queued", c_uint32),
        ("pipeline_steps", c_uint64),
        ("pipeline_seconds", c_double),
        ("device_busy_seconds", c_double),
        ("d2h_busy_seconds", c_double),
        ("h2d_busy_seconds", c_double),
        ("cpu_busy_seconds", c_double),
        ("kv_moves_to_host", c_uint64),
        ("kv_moves_to_device", c_uint64),
        ("kv_moved_bytes", c_uint64),
        ("host_decodes_held", c_uint64),
    ]


PROGRESS = CFUNCTYPE(None, c_void_p, c_char_p, c_double)


class tandem_tune_config(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("device", c_int),  # tandem_device
        ("emu_gpu", c_char_p),
        ("emu_link", c_char_p),
        ("threads", c_int),
        ("model_path", c_char_p),
        ("progress", PROGRESS),
        ("user", c_void_p),
    ]


class tandem_plan_query(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("profile", c_char_p),
        ("model_path", c_char_p),
        ("batch", c_int),
        ("ctx", c_int),
        ("gpu_mem_bytes", c_size_t),
        ("host_kv_bytes", c_size_t),
        ("host_seqs", c_int),
    ]


class tandem_plan_result(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("device_tok_s", c_double),
        ("device_batch", c_int),
        ("cpu_attn_tok_s", c_double),
        ("hybrid_tok_s", c_double),
        ("hybrid_host_seqs", c_int),
        ("hybrid_sub_batches", c_int),
        ("chosen", c_int),  # tandem_mode
        ("chosen_tok_s", c_double),
        ("step_seconds", c_double),
        ("device_busy_seconds", c_double),
        ("link_busy_seconds", c_double),
        ("cpu_busy_seconds", c_double),
        ("search_seconds", c_double),
    ]


# ---- functions ---------------------------------------------------------------

status = c_int  # tandem_status
size_p = POINTER(c_size_t)
int32_p = POINTER(c_int32)

PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "tandem_status_name": (c_char_p, [status]),
    "tandem_version": (c_char_p, []),
    # the 0.1.0 initializers (deprecated, but in every 0.x library): what
    # _init_struct falls back to when the sized ones below are missing
    "tandem_config_init": (None, [POINTER(tandem_config)]),
    "tandem_engine_open": (status, [POINTER(tandem_config), POINTER(engine_p)]),
    "tandem_engine_close": (None, [engine_p]),
    "tandem_engine_errmsg": (c_char_p, [engine_p]),
    "tandem_engine_device": (c_char_p, [engine_p]),
    "tandem_n_vocab": (c_int32, [engine_p]),
    "tandem_token_bos": (c_int32, [engine_p]),
    "tandem_token_eos": (c_int32, [engine_p]),
    "tandem_tokenize": (status, [engine_p, c_char_p, c_size_t, c_int, c_int, int32_p, c_size_t, size_p]),
    "tandem_detokenize": (status, [engine_p, int32_p, c_size_t, c_char_p, c_size_t, size_p]),
    "tandem_sampling_init": (None, [POINTER(tandem_sampling)]),
    "tandem_finish_name": (c_char_p, [c_int]),
    "tandem_submit_text": (
        status,
        [engine_p, c_char_p, c_size_t, POINTER(tandem_sampling), c_void_p, POINTER(request_p)],
    ),
    "tandem_submit_tokens": (
        status,
        [engine_p, int32_p, c_size_t, POINTER(tandem_sampling), c_void_p, POINTER(request_p)],
    ),
    "tandem_submit_chat": (
        status,
        [engine_p, POINTER(tandem_message), c_size_t, POINTER(tandem_sampling), c_void_p, POINTER(request_p)],
    ),
    "tandem_chat_template": (c_char_p, [engine_p]),
    "tandem_cancel": (status, [engine_p, request_p]),
    "tandem_run": (status, [engine_p, POINTER(tandem_callbacks)]),
    "tandem_step": (status, [engine_p, POINTER(tandem_callbacks), POINTER(c_int)]),
    "tandem_request_finish": (c_int, [request_p]),
    # not NUL-terminated: a pointer, read with string_at and the length
    "tandem_request_text": (c_void_p, [request_p, size_p]),
    "tandem_request_tokens": (int32_p, [request_p, size_p, size_p]),
    "tandem_request_status": (status, [request_p]),
    "tandem_request_error": (c_char_p, [request_p]),
    "tandem_request_free": (None, [engine_p, request_p]),
    "tandem_engine_stats": (status, [engine_p, POINTER(tandem_stats)]),
}

# Functions a library may lack (built before they came): declared when
# present; has() says which.
OPTIONAL_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "tandem_config_init_sized": (None, [POINTER(tandem_config), c_size_t]),
    "tandem_sampling_init_sized": (None, [POINTER(tandem_sampling), c_size_t]),
    # issue 7: the hardware profile and the cost model's plans
    "tandem_tune_config_init": (None, [POINTER(tandem_tune_config)]),
    "tandem_tune_config_init_sized": (None, [POINTER(tandem_tune_config), c_size_t]),
    "tandem_tune": (status, [POINTER(tandem_tune_config), c_char_p, c_char_p, c_size_t]),
    "tandem_plan_query_init": (None, [POINTER(tandem_plan_query)]),
    "tandem_plan_query_init_sized": (None, [POINTER(tandem_plan_query), c_size_t]),
    "tandem_plan": (status, [POINTER(tandem_plan_query), POINTER(tandem_plan_result), c_char_p, c_size_t]),
}


class LibraryNotFoundError(OSError):
    """libtandem could not be found or loaded; the message lists every place tried."""


def _candidates() -> list[tuple[str, str]]:
    """(path, where it comes from), in the order they are tried."""
    here = Path(__file__).resolve().parent
    out: list[tuple[str, str]] = []
    env = os.environ.get(LIBRARY_ENV)
    if env:
        # set explicitly: the only candidate, never silently passed over
        return [(os.path.abspath(env), f"${LIBRARY_ENV}")]
    out.append((str(here / LIBRARY_NAME), "next to the package"))
    try:  # written by setup.py at install time: the checkout the package came from
        from ._build_info import BUILD_DIR  # type: ignore[import-not-found]

        out.append((str(Path(BUILD_DIR) / LIBRARY_NAME), "the build tree recorded at install time"))
    except ImportError:
        pass
    repo = here.parent.parent  # python/tandem -> the checkout
    if (repo / "include" / "tandem.h").is_file():
        out.append((str(repo / "build" / LIBRARY_NAME), "the checkout's build tree"))
    # cmake --install puts the versioned name on the system's library path
    out.append(("libtandem.so.0", "the system's library path"))
    return out


def _load() -> ctypes.CDLL:
    tried: list[str] = []
    for path, where in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(f"  {path} ({where}): no such file")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"  {path} ({where}): {e}")
            continue
        _declare(lib, path)
        return lib
    raise LibraryNotFoundError(
        "cannot load libtandem; tried:\n"
        + "\n".join(tried)
        + f"\nBuild it (make, or cmake --build build) or set {LIBRARY_ENV} to the path of libtandem.so."
    )


def _declare(lib: ctypes.CDLL, path: str) -> None:
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibraryNotFoundError(f"{path} has no {name}: not a libtandem of this API") from None
        fn.restype = restype
        fn.argtypes = argtypes
    for name, (restype, argtypes) in OPTIONAL_PROTOTYPES.items():
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = restype
            fn.argtypes = argtypes
    version = lib.tandem_version().decode()
    major = int(version.split(".")[0])
    if major != HEADER_VERSION[0]:
        raise LibraryNotFoundError(
            f"{path} is libtandem {version}; these bindings need {HEADER_VERSION[0]}.x"
        )


# ---- structs the library initializes ----------------------------------------
#
# The library's tandem_X_init_sized(s, size) writes its defaults into the first
# `size` bytes at most and sets struct_size to the smaller of size and its own
# sizeof: given this mirror's size, fields the library has and this mirror
# lacks are never written, and fields this mirror has and an older library
# lacks are not read by it (the struct_size it set says so).
#
# A library from before the sized initializers has only tandem_X_init, which
# writes its own sizeof: then the struct is initialized inside a buffer of
# the library's size (learnt once, from the struct_size an init writes into a
# scratch buffer), keeping the struct_size the library set.

_SCRATCH = 4096
_lib_sizes: dict[str, int] = {}


def has(name: str) -> bool:
    """Whether the loaded library exports this function."""
    return getattr(lib(), name, None) is not None


def _library_size(name: str) -> int:
    """sizeof the library's own struct `name`."""
    if name not in _lib_sizes:
        scratch = ctypes.create_string_buffer(_SCRATCH)
        target = ctypes.cast(scratch, POINTER(globals()[name]))
        if has(name + "_init_sized"):
            getattr(lib(), name + "_init_sized")(target, _SCRATCH)
        else:
            getattr(lib(), name + "_init")(target)
        size = c_size_t.from_buffer(scratch).value
        if not 0 < size <= _SCRATCH // 2:
            raise LibraryNotFoundError(f"{name}_init wrote struct_size {size}: not a libtandem of this API")
        _lib_sizes[name] = size
    return _lib_sizes[name]


def _init_struct(cls: type[Structure]) -> Any:
    name = cls.__name__
    if has(name + "_init_sized"):
        s = cls()
        getattr(lib(), name + "_init_sized")(ctypes.byref(s), ctypes.sizeof(cls))
        if not 0 < s.struct_size <= ctypes.sizeof(cls):
            raise LibraryNotFoundError(
                f"{name}_init_sized wrote struct_size {s.struct_size}: not a libtandem of this API"
            )
        return s
    if not has(name + "_init"):
        raise LibraryNotFoundError(
            f"{library_path()} (libtandem {lib().tandem_version().decode()}) has no {name}_init: "
            "it was built before this function came"
        )
    size = _library_size(name)
    s = cls.from_buffer(ctypes.create_string_buffer(max(ctypes.sizeof(cls), size)))  # s keeps its buffer
    getattr(lib(), name + "_init")(ctypes.byref(s))
    return s


def new_config() -> tandem_config:
    """A tandem_config as tandem_config_init leaves it."""
    return _init_struct(tandem_config)


def new_sampling() -> tandem_sampling:
    """A tandem_sampling as tandem_sampling_init leaves it."""
    return _init_struct(tandem_sampling)


def new_tune_config() -> tandem_tune_config:
    """A tandem_tune_config as tandem_tune_config_init leaves it."""
    return _init_struct(tandem_tune_config)


def new_plan_query() -> tandem_plan_query:
    """A tandem_plan_query as tandem_plan_query_init leaves it."""
    return _init_struct(tandem_plan_query)


def config_has(field: str) -> bool:
    """Whether the loaded library's tandem_config has this field."""
    f = getattr(tandem_config, field)
    return _library_size("tandem_config") >= f.offset + f.size


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded library (loaded on first use, once per process)."""
    global _lib
    if _lib is None:
        with _lib_lock:
            if _lib is None:
                _lib = _load()
    return _lib


def library_path() -> str:
    """The file the loaded library came from."""
    return lib()._name
