"""Invariant checkers the explorer and the trace replayer run after every step.

Not a kernel file: these are the properties KVM's TDP MMU and its TDX glue maintain
implicitly (and the kernel asserts piecemeal with WARN/KVM_BUG_ON/``CONFIG_KVM_PROVE_MMU``).
Both checkers return readable strings, an empty list meaning "consistent".

``check_mmu_invariants(kvm)`` (any VM): page stats equal a recount of every root's tables; one
valid root per role; outside invalidations, no leaf on the wrong side of the memory
attributes; no
leaf above the largest mapping level allowed, nor a shared one above the host's mapping
level outside an mmu_notifier invalidation, nor a shared 4K one on a page the host
migrated away; every present non-leaf points to a live SP one
level down (same role, same gfn, linked back); no frozen SPTE outside an operation; no leaf
of a valid root on a gfn outside every memslot.

``check_tdx_invariants(kvm, tdx)``: the mirror root and the S-EPT agree; no private page
freed (punched or removed-but-not-WBINVDed) while mapped; no KVM_BUG; no TDX error the kernel
treats as fatal; KVM's vCPU modes match the module's epoch refcounts; plus
``TdxModule.violations()``.

Simplifications (one line each):
- "In an operation" = someone holds ``mmu_lock``; a held module lock means a SEAMCALL is in
  flight, so the module's "lock still held" findings are reported only with ``quiescent=True``.
- While a *writer* holds ``mmu_lock`` the mirror/S-EPT agreement is not checked: write-lock
  sequences (mirror write, then BLOCK/TRACK/REMOVE or DEMOTE) disagree between their steps.
- Under the read lock only, a disagreement must sit at a FROZEN mirror SPTE (the freeze
  protocol of ``set_external_spte_present``).
- After teardown (``tdx.torn_down``) only "every TD page was reclaimed" is checked on the
  module side: the module keeps no S-EPT tree consistent with a reclaimed TD.
Costs: O(tables × 512) for the KVM walk and O(S-EPT pages × 512) for the module side, i.e.
linear in what is mapped; nothing scans guest memory.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterator, Optional

from .kvm import IN_GUEST_MODE, OUTSIDE_GUEST_MODE
from .mmu_internal import KvmMmuPage
from .spte import (
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    SPTE_MMU_PRESENT_MASK,
    spte_to_pfn,
)
from .tdx_module import sept as S
from .tdx_module import sept_leaves

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm
    from .tdx import KvmTdx

_MODULE_LOCK_MSGS = ("still held", "left held")


def _in_operation(kvm: "Kvm") -> bool:
    lock = kvm.mmu_lock
    return lock.writer or lock.readers > 0


_BLOCK = 8  # entries compared at once by _present_indexes


def _present_indexes(spt, nonpresent: int) -> Iterator[int]:
    """Indexes of the entries of a table that are not ``nonpresent``.  Most tables are
    nearly empty, and an SPTE above 2^62 is a fresh int each time it is read, so blocks of
    8 entries are compared as bytes first: a scenario that checks invariants after every
    step walks ~20k tables per execution."""
    raw = spt.tobytes()
    size = _BLOCK * spt.itemsize
    empty = nonpresent.to_bytes(spt.itemsize, sys.byteorder) * _BLOCK
    for off in range(0, len(raw), size):
        if raw[off:off + size] != empty:
            base = off // spt.itemsize
            for idx in range(base, base + _BLOCK):
                if spt[idx] != nonpresent:
                    yield idx


def _walk_root(kvm: "Kvm", root: KvmMmuPage, out: list[str], counts: list[int],
               leaves: Optional[dict], tables: Optional[dict], frozen: Optional[set],
               allow_frozen: bool, max_leaf_level: int) -> None:
    """Pre-order walk of one root: structural checks, leaf counts per level, and (for
    mirror roots) the maps the S-EPT comparison needs."""
    mirror = root.role.is_mirror
    kind = "mirror" if mirror else "direct"
    # Direct roots of a TD index by the aliased (shared-bit) gfn, but SPs and iter.gfn
    # carry the stripped one (tdp_iter: gfn_bits are only ORed into the index).
    strip = ~kvm.kvm_gfn_root_bits(root)
    nonpresent = kvm.profile.SHADOW_NONPRESENT_VALUE
    frozen_spte = kvm.profile.FROZEN_SPTE
    moved = not mirror and any(slot.backing.moved for slot in kvm.memslots)
    # Outside every invalidation each leaf sits on its side of the memory attributes.
    attrs = kvm.mem_attr_private if kvm.kvm_arch_has_private_mem() and \
        not kvm.mmu_invalidate_in_progress else None
    # Only valid roots: an invalid one takes no new leaves, but may keep old ones until
    # the thread that scheduled it zaps it (a concurrent kvm_mmu_zap_all_fast can return
    # first); KVM_REQ_MMU_FREE_OBSOLETE_ROOTS keeps vCPUs off it.
    valid = not root.role.invalid
    stack = [root]
    while stack:
        sp = stack.pop()
        level = sp.role.level
        step = KVM_PAGES_PER_HPAGE(level)
        spt = sp.spt
        for idx in _present_indexes(spt, nonpresent):
            spte = spt[idx]
            gfn = (sp.gfn + idx * step) & strip
            if spte == frozen_spte:
                if frozen is not None:
                    frozen.add((gfn, level))
                if not allow_frozen:
                    out.append(f"{kind} L{level} gfn {gfn:#x}: FROZEN_SPTE outside an operation")
                continue
            if not spte & SPTE_MMU_PRESENT_MASK:
                continue  # MMIO or another non-present value
            if level == PG_LEVEL_4K or spte & PT_PAGE_SIZE_MASK:
                counts[level - 1] += 1
                if level > max_leaf_level:
                    out.append(f"{kind} L{level} gfn {gfn:#x}: leaf above the maximum "
                               f"mapping level {max_leaf_level}")
                elif not mirror and level > PG_LEVEL_4K:
                    _check_host_level(kvm, gfn, level, out)
                elif moved:
                    _check_host_pfn(kvm, gfn, spte, out)
                if valid:
                    _check_memslot(kvm, gfn, spte, kind, level, out)
                if attrs is not None:
                    _check_attributes(attrs, gfn, step, mirror, level, out)
                if leaves is not None:
                    leaves[(gfn, level)] = spte
                continue
            child = kvm.sp_by_pfn.get(spte_to_pfn(spte))
            if child is None:
                out.append(f"{kind} L{level} gfn {gfn:#x}: non-leaf {spte:#x} points to no "
                           f"live SP")
                continue
            if (child.role.level != level - 1 or child.gfn != gfn
                    or child.role.is_mirror != mirror or child.parent is not sp
                    or child.parent_index != idx):
                out.append(f"{kind} L{level} gfn {gfn:#x}: child SP {child!r} does not match "
                           f"its parent entry")
                continue
            if tables is not None:
                tables[(gfn, level)] = child
            stack.append(child)


def _check_host_level(kvm: "Kvm", gfn: int, level: int, out: list[str]) -> None:
    """A huge shared leaf may not outlive the host's huge page: the host changes its
    mapping only inside an mmu_notifier invalidation, whose start zaps the leaf and whose
    in-progress range keeps faults from re-creating it until the end."""
    if kvm.mmu_invalidate_in_progress or kvm.kvm_mem_is_private(gfn):
        return
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return
    host = slot.backing.host_pfn_mapping_level(slot.gfn_to_hva(gfn))
    if host < level:
        out.append(f"direct L{level} gfn {gfn:#x}: leaf above the host mapping level "
                   f"{host} (stale after a host split)")


def _check_memslot(kvm: "Kvm", gfn: int, spte: int, kind: str, level: int,
                   out: list[str]) -> None:
    """A leaf of a valid root maps a gfn some memslot holds: a DELETE or MOVE publishes
    the slot's KVM_MEMSLOT_INVALID copy (new faults retry), waits for faults still using
    the old one, zaps its leaves (``kvm_arch_flush_shadow_memslot``) and only then drops
    it.  A leaf left behind maps a page userspace may unmap and the host reuse."""
    if kvm.gfn_to_memslot(gfn) is None:
        out.append(f"{kind} L{level} gfn {gfn:#x}: maps pfn {spte_to_pfn(spte):#x}, but no "
                   "memslot holds the gfn (left behind by a memslot DELETE/MOVE: use after "
                   "free)")


def _check_attributes(attrs, gfn: int, npages: int, mirror: bool, level: int,
                      out: list[str]) -> None:
    """A private (mirror) leaf maps only private gfns, a shared (direct) one only shared
    gfns: ``kvm_vm_set_mem_attributes`` zaps the old side inside its invalidation, and a
    fault that looked up the attribute before it retries (``mmu_invalidate_retry_gfn``).
    Anything else maps memory on the wrong side after a conversion."""
    if mirror and not attrs.covers(gfn, gfn + npages):
        out.append(f"mirror L{level} gfn {gfn:#x}: private leaf over shared memory "
                   "(stale after a conversion)")
    elif not mirror and attrs.intersects(gfn, gfn + npages):
        out.append(f"direct L{level} gfn {gfn:#x}: shared leaf over private memory "
                   "(stale after a conversion)")


def _check_host_pfn(kvm: "Kvm", gfn: int, spte: int, out: list[str]) -> None:
    """A shared 4K leaf maps the page the host has behind its hva now: a host migration
    changes that page only inside an mmu_notifier invalidation, whose start zaps the leaf
    and whose sequence count makes a fault that looked up the old page retry
    (``mmu_invalidate_retry_gfn``).  A leaf on the old page lets the guest use a page the
    host freed."""
    if kvm.mmu_invalidate_in_progress or kvm.kvm_mem_is_private(gfn):
        return
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None or not slot.backing.moved:
        return
    host = slot.backing.hva_to_pfn(slot.gfn_to_hva(gfn))
    if spte_to_pfn(spte) != host:
        out.append(f"direct L1 gfn {gfn:#x}: maps pfn {spte_to_pfn(spte):#x}, but the host "
                   f"migrated that page to pfn {host:#x} (stale after the invalidation)")


def _max_leaf_level(kvm: "Kvm", mirror: bool) -> int:
    policy = kvm.policy
    top = min(policy.max_huge_page_level, KVM_MAX_HUGEPAGE_LEVEL)
    if mirror:
        # TDX: 4K only (UPSTREAM) or up to 2M with HP-v3; never 1G.
        top = min(top, policy.tdx_private_max_level, PG_LEVEL_2M) \
            if policy.tdx_huge_page else PG_LEVEL_4K
    return top


def check_mmu_invariants(kvm: "Kvm") -> list[str]:
    """Structural invariants of the TDP MMU of any VM (see the module docstring)."""
    out: list[str] = []
    in_op = _in_operation(kvm)
    counts = [0, 0, 0, 0, 0]
    words = [r.role.word for r in kvm.tdp_mmu_roots if not r.role.invalid]
    if len(words) != len(set(words)):
        # kvm_tdp_mmu_alloc_root re-checks under tdp_mmu_pages_lock so that two vCPUs
        # loading at once share one root.
        out.append(f"{len(words) - len(set(words))} duplicate valid root(s) with one role")
    for root in kvm.tdp_mmu_roots:
        _walk_root(kvm, root, out, counts, None, None, None, in_op,
                   _max_leaf_level(kvm, root.role.is_mirror))
    # Stats move in handle_changed_spte right after the SPTE write: only stable between
    # operations.
    if not in_op and counts[:3] != list(kvm.stat.pages):
        out.append(f"stat.pages {list(kvm.stat.pages)} != recount {counts[:3]}")
    return out


def _mirror_maps(kvm: "Kvm", out: list[str], allow_frozen: bool):
    leaves: dict[tuple[int, int], int] = {}
    tables: dict[tuple[int, int], KvmMmuPage] = {}
    frozen: set[tuple[int, int]] = set()
    counts = [0, 0, 0, 0, 0]
    for root in kvm.tdp_mmu_roots:
        if root.role.is_mirror and not root.role.invalid:
            _walk_root(kvm, root, out, counts, leaves, tables, frozen, allow_frozen,
                       _max_leaf_level(kvm, True))
    return leaves, tables, frozen


def check_tdx_invariants(kvm: "Kvm", tdx: "KvmTdx", quiescent: bool = False) -> list[str]:
    """Mirror root ↔ S-EPT agreement and the TDX-specific invariants (see the module
    docstring).  ``quiescent=True`` asserts nothing is in flight at all (also reports
    module locks left held)."""
    out: list[str] = []
    for bug in kvm.bugs:
        out.append(f"KVM_BUG_ON in {bug.function}: {bug.message}")
    for function, leaf, status in tdx.fatal_errors:
        out.append(f"fatal TDX error in {function}: {leaf} -> {status:#018x}")
    module = tdx.module
    if module is None:
        return out
    if module.fatal:
        out.append("TDX module marked the TD fatal")
    for vcpu in kvm.vcpus:
        mv = module.vcpus.get(vcpu.vcpu_id)
        in_guest = mv is not None and mv.in_guest
        # Mid-entry IN_GUEST_MODE precedes TDH.VP.ENTER (the kick relies on it); inside
        # the TD while OUTSIDE_GUEST_MODE is never right.
        if (in_guest != (vcpu.mode == IN_GUEST_MODE)) if quiescent else \
                (in_guest and vcpu.mode == OUTSIDE_GUEST_MODE):
            out.append(f"vCPU {vcpu.vcpu_id}: KVM mode {vcpu.mode} but module in_guest "
                       f"{in_guest}")
    if tdx.torn_down:
        if len(module.pamt):
            out.append(f"teardown left {len(module.pamt)} TD pages unreclaimed in the PAMT")
        return out

    for msg in module.violations():
        if quiescent or not any(s in msg for s in _MODULE_LOCK_MSGS):
            out.append(f"TDX module: {msg}")

    lock = kvm.mmu_lock
    in_op = lock.writer or lock.readers > 0
    # Structural findings of this walk are check_mmu_invariants' business: not repeated.
    leaves, tables, frozen = _mirror_maps(kvm, [], True)
    sept: dict[tuple[int, int], tuple[int, int]] = {}
    for e in sept_leaves(module):
        sept[(e.gfn, e.level)] = (e.state, e.pfn)
    _check_private_pages_alive(kvm, tdx, sept, out, in_op)
    if lock.writer:
        return out  # write-lock sequences disagree between their steps (docstring)

    # KVM → S-EPT: every present mirror entry has its S-EPT counterpart.
    for (gfn, level), spte in leaves.items():
        got = sept.get((gfn, level - 1))
        pfn = spte_to_pfn(spte)
        if got is None:
            out.append(f"mirror L{level} leaf gfn {gfn:#x} pfn {pfn:#x} has no S-EPT leaf")
        elif got[0] not in (S.MAPPED, S.PENDING) or got[1] != pfn:
            out.append(f"mirror L{level} leaf gfn {gfn:#x} pfn {pfn:#x} but S-EPT has "
                       f"{S.STATE_NAMES.get(got[0], hex(got[0]))} pfn {got[1]:#x}")
    for (gfn, level), child in tables.items():
        got = sept.get((gfn, level - 1))
        if got is None or got[0] != S.NL_MAPPED or got[1] != child.external_spt:
            desc = "none" if got is None else \
                f"{S.STATE_NAMES.get(got[0], hex(got[0]))} pfn {got[1]:#x}"
            out.append(f"mirror L{level} table gfn {gfn:#x} (external_spt "
                       f"{child.external_spt}) but S-EPT has {desc}")
    # S-EPT → KVM: no S-EPT mapping without a mirror SPTE (a frozen one is mid-operation).
    for (gfn, tlevel), (state, pfn) in sept.items():
        key = (gfn, tlevel + 1)
        if key in frozen:
            continue
        if S.is_leaf(state):
            if key not in leaves:
                out.append(f"S-EPT L{tlevel} {S.STATE_NAMES.get(state, hex(state))} gfn "
                           f"{gfn:#x} pfn {pfn:#x} without a mirror leaf")
        elif key not in tables:
            out.append(f"S-EPT L{tlevel} {S.STATE_NAMES.get(state, hex(state))} gfn {gfn:#x} "
                       f"without a mirror table")
        if state in S.ANY_BLOCKED:
            out.append(f"S-EPT L{tlevel} gfn {gfn:#x} left "
                       f"{S.STATE_NAMES.get(state, hex(state))} outside a zap/split")
    return out


def _check_private_pages_alive(kvm: "Kvm", tdx: "KvmTdx", sept: dict, out: list[str],
                               in_op: bool) -> None:
    """No private page freed while mapped: an S-EPT leaf's guest_memfd pages must not be
    punched; a page the module removed must be WBINVDed before anyone reuses it (KVM does it
    under the same write lock)."""
    gmems = [(s.gmem.pfn_base, s.gmem.pfn_base + s.gmem.npages, s.gmem)
             for s in kvm.memslots if s.gmem is not None]
    if gmems:
        for (gfn, tlevel), (state, pfn) in sept.items():
            if not S.is_leaf(state):
                continue
            n = S.pages_at(tlevel)
            for lo, hi, gmem in gmems:
                if lo <= pfn < hi and gmem.punched.intersects(pfn - lo, pfn - lo + n):
                    out.append(f"S-EPT L{tlevel} gfn {gfn:#x} maps pfn {pfn:#x} whose "
                               f"guest_memfd page was freed (punched)")
    if not in_op and tdx.module.unflushed:
        out.append(f"{len(tdx.module.unflushed)} pages removed from the TD without "
                   f"TDH.PHYMEM.PAGE.WBINVD (first {min(tdx.module.unflushed):#x})")


def check_invariants(kvm: "Kvm", tdx: Optional["KvmTdx"] = None,
                     quiescent: bool = False) -> list[str]:
    """Both checkers: the MMU ones for any VM, the TDX ones when ``tdx`` is given."""
    out = check_mmu_invariants(kvm)
    if tdx is not None:
        out += check_tdx_invariants(kvm, tdx, quiescent)
    return out


__all__ = ["check_invariants", "check_mmu_invariants", "check_tdx_invariants"]
