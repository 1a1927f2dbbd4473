"""``--kernel`` / ``--vendor`` / ``--root-level``: the kernel generation and the host a
command's model runs as.  One definition, shared by every command that runs the model."""

from __future__ import annotations

from typing import Any, Optional

import typer

from ..model.profile import (DEFAULT_PROFILE, PROFILES, KernelProfile, UnknownKernelProfile,
                             get_profile)
from ..model.spte import VENDORS

KERNEL_HELP = (f"Kernel generation the model follows: {', '.join(PROFILES)} "
               f"(default {DEFAULT_PROFILE.name}).")
VENDOR_HELP = "Host vendor, which sets the SPTE format: intel (EPT, default) or amd (NPT)."


def kernel_option(help: str = KERNEL_HELP) -> Any:
    return typer.Option(None, "--kernel", metavar="NAME", help=help)


def vendor_option(help: str = VENDOR_HELP) -> Any:
    return typer.Option(None, "--vendor", metavar="NAME", help=help)


def root_level_option() -> Any:
    return typer.Option(4, "--root-level", min=4, max=5,
                        help="TDP root level: 4, or 5 (5-level EPT / NPT on an LA57 host).")


def _bad(message: str) -> None:
    typer.echo(f"error: {message}", err=True)  # one line, no traceback
    raise typer.Exit(2)


def resolve_kernel(name: Optional[str]) -> KernelProfile:
    """The named profile (the default when None); an unknown name exits 2 with one line
    listing the valid ones."""
    if name is None:
        return DEFAULT_PROFILE
    try:
        return get_profile(name)
    except UnknownKernelProfile as e:
        _bad(f"--kernel: {e}")
    raise AssertionError  # unreachable


def resolve_vendor(name: Optional[str]) -> Optional[str]:
    """The vendor name, checked; None stays None (the command's own default)."""
    if name is not None and name not in VENDORS:
        _bad(f"--vendor: unknown vendor {name!r}; valid: {', '.join(VENDORS)}")
    return name
