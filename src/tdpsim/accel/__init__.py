"""The optional compiled build of the model (issue 16): mypyc from the same Python source.

Not a kernel file.  The pure-Python model stays the reference; this compiles its hot
modules (``MODULES``) with mypyc into a cache directory named after the sources' digest, and
``TDPSIM_ACCEL=1`` makes the import system load those extension modules instead of the
``.py`` files.  Nothing is compiled or loaded unless asked for, so tests that monkeypatch
or copy model modules, and CI, run the pure-Python model::

    pip install 'tdpsim[accel]'        # mypy (mypyc) and a C compiler
    python -m tdpsim.accel build       # ~2 min; prints where the build went
    TDPSIM_ACCEL=1 tdpsim compare td-boot
    python -m tdpsim.accel check       # same bytes with and without the build

The compiled modules' integer constants are annotated ``Final`` (nothing at run time in
pure Python): mypyc then inlines them instead of looking each use up in the module's dict.

A build belongs to one set of sources: after any edit of a compiled module the digest
changes and ``TDPSIM_ACCEL=1`` refuses (``tdpsim`` exits 2 saying so) until it is rebuilt,
so a stale build can never run.  The explorer swaps model classes and pickles closures by
their code objects, which compiled classes and functions do not allow, so the explorer
commands refuse to run under the build (``require_pure``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

ENV = "TDPSIM_ACCEL"
ENV_DIR = "TDPSIM_ACCEL_DIR"
_PKG = Path(__file__).resolve().parent.parent  # src/tdpsim
# The modules the 4K fault and the TD paths run through (profiled: tdp_mmu, tdp_iter,
# mmu_fault, the TDX glue and module are the top of the profile).
MODULES = tuple(f"tdpsim.model.{m}" for m in (
    "profile", "policy", "spte", "sched", "events", "locking", "mmu_internal", "memslot",
    "tlb", "kvm", "tdp_iter", "tdp_mmu", "mmu", "mmu_fault", "kvm_main", "vmx",
    "tdx", "tdx_module.status", "tdx_module.results", "tdx_module.locks", "tdx_module.pamt",
    "tdx_module.sept", "tdx_module.module"))
# mypy checks the model less strictly than mypyc would like (Optional members the code
# knows are set); these codes do not change what mypyc generates, only whether it starts.
_MYPY_FLAGS = ("--ignore-missing-imports", "--disable-error-code=union-attr",
               "--disable-error-code=arg-type", "--disable-error-code=assignment",
               "--disable-error-code=return-value", "--disable-error-code=var-annotated",
               "--disable-error-code=no-redef", "--disable-error-code=misc")


class AccelError(RuntimeError):
    """The compiled build was asked for but cannot be used."""


def _source(module: str) -> Path:
    return _PKG.parent / (module.replace(".", "/") + ".py")


def source_digest() -> str:
    """sha256 over the compiled modules' names and sources and the Python version."""
    h = hashlib.sha256()
    for m in MODULES:
        h.update(m.encode() + b"\0" + _source(m).read_bytes() + b"\0")
    h.update(sys.version.encode())
    return h.hexdigest()[:20]


def cache_root() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tdpsim" / "accel"


def build_dir() -> Path:
    return cache_root() / source_digest()


def _extensions(root: Path) -> dict[str, str]:
    """Module name -> extension file of a build directory."""
    out: dict[str, str] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for f in root.rglob("*" + suffix):
            rel = f.relative_to(root).as_posix()[: -len(suffix)]
            out[rel.replace("/", ".")] = str(f)
    return out


class _Finder:
    """A meta-path finder that serves the build's extension modules by name."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def find_spec(self, name: str, path: object = None, target: object = None):
        f = self.files.get(name)
        return None if f is None else importlib.util.spec_from_file_location(name, f)


_finder: Optional[_Finder] = None
error: Optional[str] = None  # why TDPSIM_ACCEL=1 could not be honoured


def requested() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def active() -> bool:
    return _finder is not None


def install() -> None:
    """Called by ``import tdpsim``: with ``TDPSIM_ACCEL`` set, load the compiled modules
    of the current sources, or record in ``error`` why not (never raises: the CLI reports
    it, see ``check_requested``)."""
    global _finder, error
    if not requested() or _finder is not None:
        return
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:
        error = f"{loaded[0]} was imported before tdpsim.accel.install()"
        return
    root = build_dir()
    files = _extensions(root) if root.is_dir() else {}
    if not all(m in files for m in MODULES):
        error = (f"{ENV}=1 but there is no compiled build of these sources in {root}; "
                 "run `python -m tdpsim.accel build` (needs `pip install 'tdpsim[accel]'`)")
        return
    _finder = _Finder(files)
    sys.meta_path.insert(0, _finder)


def check_requested() -> None:
    """Raise ``AccelError`` if ``TDPSIM_ACCEL`` asked for a build that is not loaded."""
    if error is not None:
        raise AccelError(error)


def require_pure(what: str) -> None:
    """Refuse ``what`` (an explorer command) under the compiled build."""
    if active():
        raise AccelError(f"{what} needs the pure-Python model (it swaps model classes and "
                         f"pickles closures); run it without {ENV}")


def build(jobs: int = 2) -> Path:
    """Compile ``MODULES`` with mypyc into ``build_dir()`` and return it."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    out = build_dir()
    src = _PKG.parent
    files = [str(_source(m).relative_to(src)) for m in MODULES]
    cwd = os.getcwd()
    os.chdir(src)  # mypyc names modules after paths relative to the source root
    try:
        exts = mypycify([*_MYPY_FLAGS, *files], opt_level="3",
                        target_dir=str(cache_root() / "tmp" / out.name / "c"))
        dist = Distribution({"name": "tdpsim-accel", "ext_modules": exts})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(out)
        cmd.build_temp = str(cache_root() / "tmp" / out.name)
        cmd.parallel = jobs
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
    return out
