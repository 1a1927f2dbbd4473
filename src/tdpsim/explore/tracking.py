"""Footprints of the model's *unannotated* shared accesses.

The model puts scheduling points on SPTE, lock, RCU and SEAMCALL accesses only.  A few
VM-wide fields are also shared between threads but read or written between points, some of
them without mmu_lock (as in the kernel):

- ``kvm->mmu_invalidate_seq`` / ``_in_progress`` / ``_range_start/end`` — read locklessly by
  ``kvm_mmu_faultin_pfn`` (``mmu_invalidate_retry_gfn_unsafe``);
- the memory-attributes xarray (``mem_attr_private``) — stored by
  ``kvm_vm_set_mem_attributes`` between its two write-locked sections, read by the fault;
- ``slot->flags`` — flipped by ``kvm_mmu_slot_apply_flags`` without mmu_lock;
- guest_memfd's folios — punched by ``kvm_gmem_punch_hole`` outside mmu_lock, allocated by
  ``kvm_gmem_get_pfn`` in the fault;
- the host page tables behind a memslot — read by the fault's ``hva_to_pfn``, rewritten by a
  host page migration (the ``host_migrate`` op notes its write).

Without them DPOR would treat, e.g., a fault's attribute check and the conversion's store as
independent and skip one order.  The tracker swaps the classes of those objects (for this
execution's objects only) for subclasses that report each access as ``(key, write)`` into the
engine's per-step list.  The model code is not copied or changed.

Known gap (documented in ``docs`` of the explorer): fields of ``struct kvm_mmu_page`` such as
``nx_huge_page_disallowed`` are read and written under the *shared* mmu_lock without a
point; DPOR does not see that race (random, PCT and DFS do explore it).
"""

from __future__ import annotations

from typing import Any, Optional

from tdpsim.model.kvm import Kvm
from tdpsim.model.memslot import GuestMemfd, HostBacking, KvmMemorySlot, RangeSet

KEY_INVALIDATE = ("vm", "mmu_invalidate")
KEY_ATTRS = ("vm", "mem_attributes")


class Tracker:
    """Where tracked accesses go: ``sink`` is the running engine's per-step list (None =
    off).  One per process: engines run one at a time (greenlets share one OS thread)."""

    __slots__ = ("sink",)

    def __init__(self) -> None:
        self.sink: Optional[list] = None

    def note(self, key: tuple, write: bool) -> None:
        sink = self.sink
        if sink is not None:
            sink.append((key, write))


TRACKER = Tracker()


def _invalidate_property(name: str) -> property:
    shadow = "_tracked_" + name

    def get(self: Any) -> Any:
        TRACKER.note(KEY_INVALIDATE, False)
        return self.__dict__[shadow]

    def set_(self: Any, value: Any) -> None:
        TRACKER.note(KEY_INVALIDATE, True)
        self.__dict__[shadow] = value

    return property(get, set_)


_INVALIDATE_FIELDS = ("mmu_invalidate_seq", "mmu_invalidate_in_progress",
                      "mmu_invalidate_range_start", "mmu_invalidate_range_end")


class TrackedKvm(Kvm):
    """``Kvm`` whose invalidation fields report their accesses."""

    for _name in _INVALIDATE_FIELDS:
        locals()[_name] = _invalidate_property(_name)
    del _name


class TrackedRangeSet(RangeSet):
    """The attributes xarray, reporting reads and stores."""

    __slots__ = ()

    def contains(self, gfn: int) -> bool:
        TRACKER.note(KEY_ATTRS, False)
        return RangeSet.contains(self, gfn)

    def covers(self, start: int, end: int) -> bool:
        TRACKER.note(KEY_ATTRS, False)
        return RangeSet.covers(self, start, end)

    def intersects(self, start: int, end: int) -> bool:
        TRACKER.note(KEY_ATTRS, False)
        return RangeSet.intersects(self, start, end)

    def add(self, start: int, end: int) -> None:
        TRACKER.note(KEY_ATTRS, True)
        RangeSet.add(self, start, end)

    def remove(self, start: int, end: int) -> None:
        TRACKER.note(KEY_ATTRS, True)
        RangeSet.remove(self, start, end)


_SLOT_FLAGS = KvmMemorySlot.flags  # the slot descriptor


class TrackedSlot(KvmMemorySlot):
    """A memslot whose ``flags`` report their accesses (``("slot", id, "flags")``)."""

    __slots__ = ()

    @property
    def flags(self) -> int:  # type: ignore[override]
        TRACKER.note(("slot", _SLOT_ID.__get__(self), "flags"), False)
        return _SLOT_FLAGS.__get__(self)

    @flags.setter
    def flags(self, value: int) -> None:
        TRACKER.note(("slot", _SLOT_ID.__get__(self), "flags"), True)
        _SLOT_FLAGS.__set__(self, value)


_SLOT_ID = KvmMemorySlot.id


class TrackedGmem(GuestMemfd):
    """guest_memfd whose allocation and hole punch report their accesses."""


    def kvm_gmem_get_pfn(self, index: int) -> tuple[int, int]:
        # Allocation on demand is idempotent and commutes with other allocations: a read.
        TRACKER.note(("gmem", index >> 9), False)
        return GuestMemfd.kvm_gmem_get_pfn(self, index)

    def punch_hole(self, start: int, end: int) -> None:
        for frame in range(start >> 9, ((end - 1) >> 9) + 1):
            TRACKER.note(("gmem", frame), True)
        GuestMemfd.punch_hole(self, start, end)


KEY_HOST_PTE = ("host", "pte")


class TrackedBacking(HostBacking):
    """The host mapping, reporting the fault's lookups of the host PTE."""

    def hva_to_pfn(self, hva: int) -> int:
        TRACKER.note(KEY_HOST_PTE, False)
        return HostBacking.hva_to_pfn(self, hva)


def track(kvm: Kvm) -> Tracker:
    """Start tracking the unannotated shared fields of one VM (after its setup ran)."""
    for name in _INVALIDATE_FIELDS:
        kvm.__dict__["_tracked_" + name] = kvm.__dict__.pop(name)
    kvm.__class__ = TrackedKvm
    kvm.mem_attr_private.__class__ = TrackedRangeSet
    for slot in kvm.memslots:
        slot.__class__ = TrackedSlot
        slot.backing.__class__ = TrackedBacking
        if slot.gmem is not None:
            slot.gmem.__class__ = TrackedGmem
    return TRACKER
