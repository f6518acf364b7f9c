"""Packaging: pyproject.toml has the metadata; this adds libtandem to the package.

At build time, libtandem.so from the checkout's build tree ($TANDEM_BUILD_DIR,
else ../build) is copied into the package (with the CUDA plugin when it was
built), and the build tree's location is recorded so that an install made
before the library was built still finds it there later. Without a built
library the package installs all the same and finds libtandem at run time
($TANDEM_LIBRARY, the recorded build tree, the system's library path).
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
BUILD_DIR = Path(os.environ.get("TANDEM_BUILD_DIR", HERE.parent / "build")).resolve()
# in the build tree -> in the package (the CUDA plugin is looked for next to libtandem)
LIBRARIES = {"libtandem.so": "libtandem.so", "gpu/cuda/libtandem_cuda.so": "libtandem_cuda.so"}


def built_libraries() -> dict[Path, str]:
    return {BUILD_DIR / src: name for src, name in LIBRARIES.items() if (BUILD_DIR / src).is_file()}


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "tandem"
        for src, name in built_libraries().items():
            shutil.copyfile(src.resolve(), dest / name)  # the file, not the symlink chain
            os.chmod(dest / name, 0o755)
        (dest / "_build_info.py").write_text(
            '"""Written by setup.py: the build tree this package was installed from."""\n\n'
            f"BUILD_DIR = {str(BUILD_DIR)!r}\n"
        )


class BinaryDistribution(Distribution):
    """A wheel that carries libtandem is tied to this platform."""

    def has_ext_modules(self) -> bool:
        return bool(built_libraries())


setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution)
