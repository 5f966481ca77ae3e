"""Builds the click core's Cython accelerator (tracker/edge/_clickpath.pyx); everything
else about the package is in pyproject.toml. TRACKER_NO_EXTENSIONS=1 builds without it
(the pure-Python core, tracker/edge/clickpath.py, is then used)."""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("TRACKER_NO_EXTENSIONS", "") not in ("", "0")

extensions = [
    Extension(
        "tracker.edge._clickpath",
        ["tracker/edge/_clickpath.pyx"],
        extra_compile_args=["-O2"],
    )
]

if NO_EXTENSIONS:
    setup()
else:
    from Cython.Build import cythonize

    setup(ext_modules=cythonize(extensions, language_level=3, quiet=True))
