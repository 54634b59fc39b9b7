"""Build script: compiles ext/_speedups.pyx into channels_redis_fast._speedups.

CHANNELS_REDIS_FAST_NO_EXTENSIONS=1 skips the extension and yields a py3-none-any wheel.
"""

import os
import sys

from setuptools import setup



def _flag(name):
    # The rule of channels_redis_fast.speedups.env_flag, written out again only because
    # the package cannot be imported before it is built: keep the two alike.
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


NO_EXTENSIONS = _flag("CHANNELS_REDIS_FAST_NO_EXTENSIONS") or sys.implementation.name != "cpython"
DEBUG_BUILD = _flag("CHANNELS_REDIS_FAST_DEBUG_BUILD")


def extensions():
    if NO_EXTENSIONS:
        print("*** channels_redis_fast: pure-Python build ***")
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    print("*** channels_redis_fast: accelerated build ***")
    flags = ["-O0", "-g3", "-UNDEBUG"] if DEBUG_BUILD else ["-O3", "-DNDEBUG"]
    ext = Extension(
        "channels_redis_fast._speedups",
        sources=["ext/_speedups.pyx"],
        include_dirs=["ext"],
        extra_compile_args=flags if os.name != "nt" else [],
    )
    return cythonize(
        [ext],
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            # No "freethreading_compatible": the prefix pool is module-level state guarded
            # only by the GIL, so a free-threaded interpreter keeps the GIL on for this
            # module rather than race on it.
            "linetrace": DEBUG_BUILD,
        },
        annotate=DEBUG_BUILD,
    )


setup(ext_modules=extensions())
