"""Builds the `nixl` package: nixl._bindings is one C file compiled over the
headers nixl.h, nixl_ucx.h and nixl_verbs.h at the repository root.

    pip install ./python                       (from the repository root)
    pip install --no-build-isolation ./python

No pyproject.toml on purpose: pip then builds with the setuptools already
installed (Debian's python3-setuptools) and needs no network."""

import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if not os.path.exists(os.path.join(ROOT, "nixl.h")):
    raise SystemExit("setup.py: nixl.h not found next to python/: build from the repository")

bindings = Extension(
    "nixl._bindings",
    sources=["nixl/_bindings.c"],
    include_dirs=[ROOT],
    depends=[os.path.join(ROOT, h) for h in ("nixl.h", "nixl_ucx.h", "nixl_verbs.h", "nixl_posix.h")],
    libraries=["ibverbs", "rdmacm", "ucp", "ucs", "uring", "dl", "pthread"],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"],
)

setup(
    name="nixl",
    version="0.1.0",
    description="NIXL's Python API over nixl.h (verbs and UCX backends)",
    packages=["nixl"],
    ext_modules=[bindings],
    python_requires=">=3.9",
    install_requires=["numpy"],
)
