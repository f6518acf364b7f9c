"""Tandem from Python: ctypes bindings over libtandem.so (include/tandem.h).

    import tandem

    with tandem.Engine() as engine:              # the default model
        for c in engine.generate(["Once upon a time"], tandem.SamplingParams(max_tokens=32, temperature=0)):
            print(c.text, c.finish_reason)

    tandem.tune("profile.json")                  # this machine's hardware profile (seconds)
    print(tandem.plan("profile.json", batch=64, ctx=2048).chosen)

The library is found through $TANDEM_LIBRARY, next to this package, in the
checkout's build tree, or on the system's library path (python/README.md).
"""

from ._engine import Engine, Stream
from ._lib import LibraryNotFoundError
from ._offload import Plan, plan, tune
from ._types import Completion, SamplingParams, Stats, TandemError, Timings, Token

__version__ = "0.1.0"

__all__ = [
    "Completion",
    "Engine",
    "LibraryNotFoundError",
    "Plan",
    "SamplingParams",
    "Stats",
    "Stream",
    "TandemError",
    "Timings",
    "Token",
    "library_path",
    "library_version",
    "plan",
    "tune",
]


def library_version() -> str:
    """The version of the libtandem actually loaded (tandem_version)."""
    from . import _lib

    return _lib.lib().tandem_version().decode()


def library_path() -> str:
    """The file libtandem was loaded from."""
    from . import _lib

    return _lib.library_path()
