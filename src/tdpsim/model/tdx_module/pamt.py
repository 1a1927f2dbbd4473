"""Minimal PAMT: page type, owner, size and BEPOCH of each host page the module has seen.

Mirrors ``src/common/memory_handlers/pamt_manager.{c,h}`` of intel/tdx-module 1.5.01.

Simplifications:
- Entries are packed ints in one dict keyed by the page's base PFN; a page of size L occupies
  one entry (the hierarchical PAMT_1G/2M/4K blocks are collapsed into "covering entry" lookups).
- "Range free" uses per-2M and per-1G counters of allocated smaller pages, not a scan.
- PAMT entry locks are try-locks kept in a side dict only while held.
- Dynamic PAMT backing is a set of 2M-aligned PFNs; the PAMT pages themselves are not tracked.
- Owner is a small TD id, not a TDR PA.  TDMR ranges are not modelled (every PFN is convertible).
"""

from __future__ import annotations

from typing import Final, NamedTuple

PT_NDA: Final = 0
PT_RSVD: Final = 1
PT_REG: Final = 3
PT_TDR: Final = 4
PT_TDCX: Final = 5
PT_TDVPR: Final = 6
PT_EPT: Final = 8

_SPAN = (1, 512, 512 * 512)


class PamtEntry(NamedTuple):
    base: int
    pt: int
    size: int  # TDX page size: 0 = 4K, 1 = 2M, 2 = 1G
    owner: int
    bepoch: int


def _pack(pt: int, size: int, owner: int, bepoch: int) -> int:
    return pt | (size << 4) | (owner << 8) | (bepoch << 24)


class Pamt:
    """Shared by every ``TdxModule`` on one host when passed in explicitly."""

    __slots__ = ("_e", "_in2m", "_in1g", "_locks", "dpamt_backed")

    def __init__(self) -> None:
        self._e: dict[int, int] = {}
        self._in2m: dict[int, int] = {}
        self._in1g: dict[int, int] = {}
        self._locks: dict[int, int] = {}  # base pfn -> -1 exclusive, n>0 shared holders
        self.dpamt_backed: set[int] = set()

    def __len__(self) -> int:
        return len(self._e)

    # --- lookup ---
    def find(self, pfn: int) -> PamtEntry | None:
        """The allocated (non-NDA) entry covering ``pfn``, at any size."""
        for size in (0, 1, 2):
            base = pfn & ~(_SPAN[size] - 1)
            v = self._e.get(base)
            if v is not None and (v >> 4) & 0xF == size:
                return PamtEntry(base, v & 0xF, size, (v >> 8) & 0xFFFF, v >> 24)
        return None

    def page_type(self, pfn: int) -> int:
        e = self.find(pfn)
        return PT_NDA if e is None else e.pt

    def range_free(self, pfn: int, size: int) -> bool:
        """No allocated page overlaps [pfn, pfn + span(size))."""
        if self.find(pfn) is not None:
            return False
        if size == 1:
            return not self._in2m.get(pfn)
        if size == 2:
            return not self._in1g.get(pfn)
        return True

    # --- update ---
    def assign(self, pfn: int, pt: int, size: int, owner: int) -> None:
        """Allocate a free range (caller checked ``range_free``)."""
        self._e[pfn] = _pack(pt, size, owner, 0)
        self._count(pfn, size, +1)

    def free(self, pfn: int) -> None:
        v = self._e.pop(pfn)
        self._count(pfn, (v >> 4) & 0xF, -1)

    def set_bepoch(self, pfn: int, bepoch: int) -> None:
        v = self._e[pfn]
        self._e[pfn] = (v & 0xFFFFFF) | (bepoch << 24)

    def set_type(self, pfn: int, pt: int) -> None:
        v = self._e[pfn]
        self._e[pfn] = (v & ~0xF) | pt

    def split(self, pfn: int, new_size: int) -> None:
        """``pamt_demote``: one entry of size L becomes 512 entries of size ``new_size``."""
        v = self._e[pfn]
        pt, size, owner = v & 0xF, (v >> 4) & 0xF, (v >> 8) & 0xFFFF
        self.free(pfn)
        # All 512 children lie in the parent's 2M (or 1G) block, so they are stored and
        # counted in bulk: this runs on every demote.
        children = range(pfn, pfn + _SPAN[size], _SPAN[new_size])
        self._e.update(dict.fromkeys(children, _pack(pt, new_size, owner, 0)))
        self._count(pfn, new_size, len(children))

    def merge(self, pfn: int, new_size: int) -> None:
        """``pamt_promote``: 512 entries of size ``new_size - 1`` become one entry."""
        v = self._e[pfn]
        pt, owner = v & 0xF, (v >> 8) & 0xFFFF
        for i in range(0, _SPAN[new_size], _SPAN[new_size - 1]):
            if pfn + i in self._e:
                self.free(pfn + i)
        self.assign(pfn, pt, new_size, owner)

    def _count(self, pfn: int, size: int, delta: int) -> None:
        if size == 0:
            b2 = pfn & ~511
            self._in2m[b2] = self._in2m.get(b2, 0) + delta
        if size <= 1:
            b1 = pfn & ~(_SPAN[2] - 1)
            self._in1g[b1] = self._in1g.get(b1, 0) + delta

    # --- try-locks ---
    def try_lock(self, pfn: int, exclusive: bool) -> bool:
        held = self._locks.get(pfn, 0)
        if exclusive:
            if held:
                return False
            self._locks[pfn] = -1
            return True
        if held < 0:
            return False
        self._locks[pfn] = held + 1
        return True

    def unlock(self, pfn: int) -> None:
        held = self._locks[pfn]
        if held <= 1:
            del self._locks[pfn]
        else:
            self._locks[pfn] = held - 1

    def locks_held(self) -> int:
        return len(self._locks)
