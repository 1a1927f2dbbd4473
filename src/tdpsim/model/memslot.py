"""Memslots, ``lpage_info``, memory attributes, host backing and guest_memfd.

Mirrors ``struct kvm_memory_slot`` / ``struct kvm_lpage_info`` (``include/linux/kvm_host.h``,
``arch/x86/include/asm/kvm_host.h``), ``kvm_alloc_memslot_metadata()`` (``x86.c``),
the memory-attribute xarray (``virt/kvm/kvm_main.c``), ``host_pfn_mapping_level()``
(``mmu.c``) and ``kvm_gmem_get_pfn()`` (``virt/kvm/guest_memfd.c``).

Simplifications (one line each):
- A host virtual address maps to host pfn ``hva >> PAGE_SHIFT`` (identity) until the host
  migrates that page (``HostBacking.moved``), so THP/hugetlb alignment of the hva is
  alignment of the pfn.
- The host page size is given per region (4K, THP 2M, hugetlb 1G) with per-2M-frame splits,
  instead of walking real host page tables.
- guest_memfd pfns are ``gmem.pfn_base + index``; each 2 MiB frame has one folio order.
- Memory attributes keep only the PRIVATE bit, as x86 KVM does for TDX.
"""

from __future__ import annotations

from typing import Final

from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from .spte import (
    KVM_HPAGE_GFN_SHIFT,
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_PAGES_PER_HPAGE,
    PAGE_SHIFT,
    PG_LEVEL_1G,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
)

KVM_MEM_LOG_DIRTY_PAGES: Final = 1 << 0
KVM_MEM_READONLY: Final = 1 << 1
KVM_MEM_GUEST_MEMFD: Final = 1 << 2
# KVM-internal (include/linux/kvm_host.h): set while a slot is being deleted or moved.
KVM_MEMSLOT_INVALID: Final = 1 << 16

KVM_MEMORY_ATTRIBUTE_PRIVATE: Final = 1 << 3

# High bits of kvm_lpage_info.disallow_lpage; the low bits count other reasons.
KVM_LPAGE_MIXED_FLAG: Final = 1 << 31
KVM_LPAGE_GUEST_INHIBIT_FLAG: Final = 1 << 30  # HP-v3


class RangeSet:
    """Sorted disjoint [start, end) gfn intervals: the model of the attributes xarray."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def contains(self, gfn: int) -> bool:
        i = bisect_right(self.starts, gfn) - 1
        return i >= 0 and gfn < self.ends[i]

    def covers(self, start: int, end: int) -> bool:
        """Every gfn of [start, end) is in the set."""
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def intersects(self, start: int, end: int) -> bool:
        i = bisect_right(self.starts, end - 1) - 1
        return i >= 0 and self.ends[i] > start

    def holds_every(self, start: int, end: int, step: int, member: bool) -> bool:
        """Whether every gfn of ``range(start, end, step)`` is in the set (``member``) or
        none is: one jump per interval instead of one lookup per gfn."""
        starts, ends = self.starts, self.ends
        n = len(starts)
        i = max(bisect_right(starts, start) - 1, 0)
        gfn = start
        while gfn < end:
            while i < n and ends[i] <= gfn:
                i += 1
            inside = i < n and starts[i] <= gfn
            if inside != member:
                return False
            if not inside and i == n:
                return True
            # The first sampled gfn at or after the end of this run of in/out gfns.
            edge = ends[i] if inside else starts[i]
            gfn = start - (start - edge) // step * step
        return True

    def add(self, start: int, end: int) -> None:
        self.remove(start, end)
        i = bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self._merge_around(i)

    def remove(self, start: int, end: int) -> None:
        starts, ends = [], []
        for s, e in zip(self.starts, self.ends):
            if e <= start or s >= end:
                starts.append(s)
                ends.append(e)
                continue
            if s < start:
                starts.append(s)
                ends.append(start)
            if e > end:
                starts.append(end)
                ends.append(e)
        self.starts, self.ends = starts, ends

    def _merge_around(self, i: int) -> None:
        lo = max(i - 1, 0)
        while lo + 1 < len(self.starts):
            if self.ends[lo] >= self.starts[lo + 1]:
                self.ends[lo] = max(self.ends[lo], self.ends[lo + 1])
                del self.starts[lo + 1], self.ends[lo + 1]
            elif lo >= i:
                break
            else:
                lo += 1


@dataclass
class HostBacking:
    """The host mapping behind a memslot's ``userspace_addr`` (shared memory).

    ``page_level`` is what the host uses where it can (4K pages, THP = 2M, hugetlb 1G);
    ``split_frames`` are 2 MiB frames (by hva >> 21) the host has split back to 4K;
    ``moved`` maps a host virtual page (hva >> 12) to the pfn that backs it since the host
    migrated it (compaction, NUMA balancing): the old page is freed.  Elsewhere the pfn is
    the page number itself.
    ``unpopulated_frames`` are 2 MiB frames of anonymous memory nobody has written yet.
    """

    hva: int
    size: int
    page_level: int = PG_LEVEL_4K
    split_frames: set[int] = field(default_factory=set)
    moved: dict[int, int] = field(default_factory=dict)
    unpopulated_frames: set[int] = field(default_factory=set)

    def hva_to_pfn(self, hva: int) -> int:
        """``hva_to_pfn`` (GUP of the host PTE): the pfn behind ``hva`` now."""
        page = hva >> PAGE_SHIFT
        moved = self.moved
        return moved.get(page, page) if moved else page

    def maps_zero_page(self, hva: int, write: bool) -> bool:
        """``hva_to_pfn`` on memory nobody populated: a read maps the (huge) zero page,
        which fast GUP's FOLL_WRITE attempt cannot make writable, so KVM maps it
        read-only; a write populates the frame.  (A write after such a read — the host's
        COW and its mmu_notifier invalidation — is not modelled.)"""
        frame = hva >> 21
        if frame not in self.unpopulated_frames:
            return False
        if write:
            self.unpopulated_frames.discard(frame)
        return not write

    def host_pfn_mapping_level(self, hva: int) -> int:
        """``host_pfn_mapping_level()``: PUD leaf → 1G, PMD leaf → 2M, else 4K.  A huge
        host page exists only where its aligned range lies wholly inside the mapping."""
        for level in (PG_LEVEL_1G, PG_LEVEL_2M):
            if self.page_level < level:
                continue
            size = KVM_PAGES_PER_HPAGE(level) << PAGE_SHIFT
            base = hva & -size
            if base < self.hva or base + size > self.hva + self.size:
                continue
            if level == PG_LEVEL_2M and (hva >> 21) in self.split_frames:
                continue
            if level == PG_LEVEL_1G and any(
                    f in self.split_frames for f in range(base >> 21, (base + size) >> 21)):
                continue
            return level
        return PG_LEVEL_4K


@dataclass
class GuestMemfd:
    """A guest_memfd file bound to a slot: the source of private pfns.

    ``folio_order`` is the order of freshly allocated folios (0: 4K pages; 9: 2M folios,
    as the hugepage guest_memfd work that HP-v3 builds on provides).  A hole punch that
    covers only part of a 2 MiB folio leaves that frame at order 0.
    """

    npages: int
    pfn_base: int
    folio_order: int = 9
    small_frames: set[int] = field(default_factory=set)
    punched: RangeSet = field(default_factory=RangeSet)

    def kvm_gmem_get_pfn(self, index: int) -> tuple[int, int]:
        """``kvm_gmem_get_pfn()``: (pfn, max_order).  Allocates on demand, so a punched
        index is re-populated (as a fresh 4K page when its folio was split)."""
        frame = index >> 9
        order = 0 if frame in self.small_frames else self.folio_order
        if order and (index & ~((1 << order) - 1)) + (1 << order) > self.npages:
            order = 0
        self.punched.remove(index, index + 1)
        return self.pfn_base + index, order

    def punch_hole(self, start: int, end: int) -> None:
        """FALLOC_FL_PUNCH_HOLE on [start, end) page indexes."""
        self.punched.add(start, end)
        for frame in range(start >> 9, ((end - 1) >> 9) + 1):
            if frame << 9 < start or (frame + 1) << 9 > end:
                self.small_frames.add(frame)


def kvm_max_level_for_order(order: int) -> int:
    """``kvm_max_level_for_order()`` (mmu.c)."""
    if order >= KVM_HPAGE_GFN_SHIFT(PG_LEVEL_1G):
        return PG_LEVEL_1G
    if order >= KVM_HPAGE_GFN_SHIFT(PG_LEVEL_2M):
        return PG_LEVEL_2M
    return PG_LEVEL_4K


class KvmMemorySlot:
    """``struct kvm_memory_slot`` with ``slot->arch.lpage_info`` and the dirty bitmap."""

    __slots__ = ("id", "as_id", "base_gfn", "npages", "flags", "userspace_addr", "backing",
                 "gmem", "gmem_offset", "lpage_info", "dirty_bitmap")

    def __init__(self, id: int, base_gfn: int, npages: int, userspace_addr: int,
                 backing: HostBacking, flags: int = 0, gmem: GuestMemfd | None = None,
                 gmem_offset: int = 0, as_id: int = 0, gmem_hva_fixup: bool = True) -> None:
        self.id = id
        self.as_id = as_id
        self.base_gfn = base_gfn
        self.npages = npages
        self.flags = flags | (KVM_MEM_GUEST_MEMFD if gmem is not None else 0)
        self.userspace_addr = userspace_addr
        self.backing = backing
        self.gmem = gmem
        self.gmem_offset = gmem_offset
        self.dirty_bitmap = bytearray(-(-npages // 64) * 8)  # unsigned longs
        self.lpage_info: dict[int, array] = {}
        self.kvm_alloc_memslot_metadata(gmem_hva_fixup)

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    def lpages(self, level: int) -> int:
        """``__kvm_mmu_slot_lpages()``."""
        shift = KVM_HPAGE_GFN_SHIFT(level)
        last = self.base_gfn + self.npages - 1
        return (last >> shift) - (self.base_gfn >> shift) + 1

    def kvm_alloc_memslot_metadata(self, gmem_hva_fixup: bool) -> None:
        """``kvm_alloc_memslot_metadata()`` (x86.c): head/tail frames that stick out of the
        slot, and every frame when gfn and hva disagree modulo the huge size, may not be
        mapped huge.  HP-v3's fixup replaces the hva check for guest_memfd slots, whose
        private pages do not come from the hva; the model then checks the guest_memfd
        binding offset instead (an assumption: a 2M folio can only back a 2M gfn frame
        when the two are congruent, and nothing else in the model enforces it)."""
        ugfn = self.userspace_addr >> PAGE_SHIFT
        if gmem_hva_fixup and self.gmem is not None:
            ugfn = self.gmem_offset
        for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
            n = self.lpages(level)
            linfo = array("l", [0]) * n
            mask = KVM_PAGES_PER_HPAGE(level) - 1
            if self.base_gfn & mask:
                linfo[0] = 1
            if (self.base_gfn + self.npages) & mask:
                linfo[n - 1] = 1
            if (self.base_gfn ^ ugfn) & mask:
                for j in range(n):
                    linfo[j] = 1
            self.lpage_info[level] = linfo

    def lpage_index(self, gfn: int, level: int) -> int:
        shift = KVM_HPAGE_GFN_SHIFT(level)
        return (gfn >> shift) - (self.base_gfn >> shift)

    def disallow_lpage(self, gfn: int, level: int) -> int:
        """``lpage_info_slot(gfn, slot, level)->disallow_lpage``."""
        return self.lpage_info[level][self.lpage_index(gfn, level)]

    def gfn_to_hva(self, gfn: int) -> int:
        return self.userspace_addr + ((gfn - self.base_gfn) << PAGE_SHIFT)

    def kvm_slot_dirty_track_enabled(self) -> bool:
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    def mark_page_dirty_in_slot(self, gfn: int) -> None:
        rel = gfn - self.base_gfn
        self.dirty_bitmap[rel >> 3] |= 1 << (rel & 7)
