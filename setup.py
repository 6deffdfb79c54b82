"""Build the compiled kernels of the agent.

Every ``kernels_pyx/NAME.pyx`` becomes the extension ``agent.kernels.NAME``.
Where no C compiler (or no Cython) is available the package still installs:
the agent then runs on the NumPy twins and says so once when the kernels are
first imported.

Compiler directives are set here, once, for every kernel.  Set
``ORBITFL_DEBUG_KERNELS=1`` at build time to turn bounds and wraparound checks
back on.
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
DEBUG = os.environ.get("ORBITFL_DEBUG_KERNELS", "") not in ("", "0")

# -ffp-contract=off: GCC fuses a*b+c into one FMA on aarch64 by default, which
# rounds differently from x86-64; the kernels must give bit-identical results
# on the flight computer and on the ground.
COMPILE_ARGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]


class OptionalBuildExt(build_ext):
    """Build the kernels, but let the install go on without them."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers, ...
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc, ext.name)

    def _skip(self, exc, name="kernels"):
        sys.stderr.write(
            f"WARNING: could not compile {name} ({exc}); "
            "orbitfl will run on its NumPy kernels\n"
        )


def extensions():
    sources = sorted((HERE / "kernels_pyx").glob("*.pyx"))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        sys.stderr.write("WARNING: Cython missing; orbitfl uses NumPy kernels\n")
        return []

    exts = [
        Extension(
            f"agent.kernels.{src.stem}",
            [str(src.relative_to(HERE))],
            extra_compile_args=COMPILE_ARGS,
            # A header change must rebuild the module that includes it.
            depends=[str(h.relative_to(HERE)) for h in src.parent.glob("*.h")],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    try:
        return cythonize(exts, compiler_directives=directives, quiet=True)
    except Exception as exc:
        sys.stderr.write(f"WARNING: cythonize failed ({exc}); using NumPy kernels\n")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
