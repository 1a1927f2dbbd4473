"""Introspection of a root's page tables for readable dumps (no kernel counterpart: the
kernel's closest is ``kvm_mmu_dump`` in debugfs).  Returns data; rendering is the CLI's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from .mmu_internal import KvmMmuPage
from .spte import (
    KVM_PAGES_PER_HPAGE,
    decode_spte,
    is_last_spte,
    is_shadow_present_pte,
)
from .tdp_iter import spte_to_child_pt

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm

LEVEL_NAMES = {1: "4K", 2: "2M", 3: "1G", 4: "512G", 5: "256T"}


@dataclass(frozen=True)
class DumpRow:
    """One non-empty SPTE: its level, the gfn range it covers, raw value and decoding."""

    depth: int
    level: int
    gfn_start: int
    gfn_end: int
    spte: int
    decoded: str


def root_name(root: KvmMmuPage) -> str:
    kind = "mirror" if root.role.is_mirror else "direct"
    return f"{kind} root l{root.role.level} (role {root.role.word:#x}{' invalid' if root.role.invalid else ''})"


def walk_root(kvm: "Kvm", root: KvmMmuPage, start: int = 0, end: int | None = None,
              max_rows: int | None = None) -> Iterator[DumpRow]:
    """Pre-order over every SPTE that is not ``SHADOW_NONPRESENT_VALUE`` and overlaps
    [start, end), without scheduling points (a dump must not perturb an exploration)."""
    rows = 0
    # Direct roots of a TD index by the aliased gfn; report the stripped one, like traces.
    strip = ~kvm.kvm_gfn_root_bits(root)
    nonpresent = kvm.profile.SHADOW_NONPRESENT_VALUE
    stack = [(root, root.gfn, 0)]
    while stack:
        sp, base, depth = stack.pop()
        level = sp.role.level
        step = KVM_PAGES_PER_HPAGE(level)
        children = []
        for i, spte in enumerate(sp.spt):
            gfn = (base + i * step) & strip
            if spte == nonpresent or gfn + step <= start or (end is not None and gfn >= end):
                continue
            yield DumpRow(depth, level, gfn, gfn + step, spte,
                          decode_spte(kvm.profile, kvm.masks, spte, level,
                                      kvm.shadow_mmio_value))
            rows += 1
            if max_rows is not None and rows >= max_rows:
                return
            if is_shadow_present_pte(spte) and not is_last_spte(spte, level):
                children.append((spte_to_child_pt(kvm, spte, level), gfn, depth + 1))
        stack.extend(reversed(children))
