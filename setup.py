"""Builds the Cython accelerators (the click core, tracker/edge/_clickpath.pyx, the id
generator, tracker/_ids.pyx, the hot window's batch grouping, tracker/_hot.pyx, the
Redis command packer, tracker/_resp.pyx, the sink's fraud counting,
tracker/sink/enrich/_fraud_counts.pyx, and in its memory,
tracker/sink/enrich/_fraud_memory.pyx, and its click rows read and written in place,
tracker/sink/enrich/_rows.pyx); everything else about the package is in pyproject.toml.
TRACKER_NO_EXTENSIONS=1 builds without them (their references, tracker/edge/clickpath.py,
tracker/ids.py, tracker/hot.py, hiredis's packer, tracker/sink/enrich/fraud_counts.py,
tracker/sink/enrich/fraud_memory.py and tracker/sink/enrich/rows.py, are then used)."""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("TRACKER_NO_EXTENSIONS", "") not in ("", "0")

extensions = [
    Extension(
        "tracker.edge._clickpath",
        ["tracker/edge/_clickpath.pyx"],
        extra_compile_args=["-O2"],
    ),
    Extension("tracker._ids", ["tracker/_ids.pyx"], extra_compile_args=["-O2"]),
    Extension("tracker._hot", ["tracker/_hot.pyx"], extra_compile_args=["-O2"]),
    Extension("tracker._resp", ["tracker/_resp.pyx"], extra_compile_args=["-O2"]),
    Extension(
        "tracker.sink.enrich._fraud_counts",
        ["tracker/sink/enrich/_fraud_counts.pyx"],
        extra_compile_args=["-O2"],
    ),
    Extension(
        "tracker.sink.enrich._rows", ["tracker/sink/enrich/_rows.pyx"], extra_compile_args=["-O2"]
    ),
    Extension(
        "tracker.sink.enrich._fraud_memory",
        ["tracker/sink/enrich/_fraud_memory.pyx"],
        extra_compile_args=["-O2"],
    ),
]

if NO_EXTENSIONS:
    setup()
else:
    from Cython.Build import cythonize

    setup(ext_modules=cythonize(extensions, language_level=3, quiet=True))
