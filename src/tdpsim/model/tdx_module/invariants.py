"""Internal consistency checks of one ``TdxModule`` (for tests and the invariant checker).

Mirrors no module file: these are the properties the module's own code maintains implicitly
(TDR.CHLDCNT, PAMT page types, S-EPT state legality per level, lock release on exit).

Simplifications:
- Checks only state owned by this model; cross-checks against KVM's mirror root live elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import sept as S
from .pamt import PT_EPT, PT_REG

if TYPE_CHECKING:
    from .module import TdxModule


def module_violations(m: "TdxModule") -> list[str]:
    """Every broken invariant, as readable strings (empty list = consistent)."""
    out: list[str] = []
    children = 0
    for page in S.iter_pages(m.root):
        out += _page_violations(m, page)
        if page is not m.root:
            children += 1
        for idx in range(S.ENTRIES):
            st = page.state[idx]
            if st in S.LEAF_STATES:
                children += S.pages_at(page.level)
    if children != m.child_count:
        out.append(f"child_count {m.child_count} != {children} counted")
    out += _lock_violations(m)
    in_guest = [0, 0]
    for v in m.vcpus.values():
        if v.in_guest:
            in_guest[v.epoch & 1] += 1
    if in_guest != m.refcount:
        out.append(f"REFCOUNT {m.refcount} != vCPUs in guest by epoch parity {in_guest}")
    return out


def _page_violations(m: "TdxModule", page: S.SeptPage) -> list[str]:
    out: list[str] = []
    allowed = S.STATES_AT_LEVEL[page.level]
    used = 0
    for idx in range(S.ENTRIES):
        st = page.state[idx]
        where = f"L{page.level} gfn {page.gfn_of(idx):#x}"
        used += st != S.FREE
        if st not in allowed:
            out.append(f"{where}: state {st:#x} illegal at this level")
        if (st in S.NON_LEAF_STATES) != (idx in page.child):
            out.append(f"{where}: non-leaf state and child page disagree")
        if idx in page.child and page.child[idx].pfn != page.pfns[idx]:
            out.append(f"{where}: child page pfn mismatch")
        if idx in page.acc and not (page.level == 1 and st == S.PENDING):
            out.append(f"{where}: accept_counter on a non-PENDING-2M entry")
        out += _pamt_violation(m, where, st, page.pfns[idx], page.level)
    if used != page.used:
        out.append(f"L{page.level} page {page.pfn:#x}: used {page.used} != {used}")
    return out


def _pamt_violation(m: "TdxModule", where: str, st: int, pfn: int, level: int) -> list[str]:
    if st == S.FREE:
        return []
    e = m.pamt.find(pfn)
    if st in S.NON_LEAF_STATES:
        ok = e is not None and e.pt == PT_EPT and e.base == pfn
    else:
        ok = e is not None and e.pt == PT_REG and e.base == pfn and e.size == level
    return [] if ok else [f"{where}: PAMT entry {e} does not match state {st:#x}"]


def _lock_violations(m: "TdxModule") -> list[str]:
    out = []
    for lk in (m.tdr_lock, m.op_state_lock, m.sept_lock, m.epoch_lock):
        if lk.held:
            out.append(f"lock {lk.name} still held ({lk.held})")
    if m.pamt.locks_held():
        out.append(f"{m.pamt.locks_held()} PAMT entry locks still held")
    for page in S.iter_pages(m.root):
        if any(f & S.LOCK_TDEL for f in page.flags):
            out.append(f"entry lock left held in L{page.level} page {page.pfn:#x}")
    return out
