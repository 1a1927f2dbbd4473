"""Footprints of the model's *unannotated* shared accesses.

The model puts scheduling points on SPTE, lock, RCU and SEAMCALL accesses only.  A few
VM-wide fields are also shared between threads but read or written between points, some of
them without mmu_lock (as in the kernel):

- ``kvm->mmu_invalidate_seq`` / ``_in_progress`` / ``_range_start/end`` — read locklessly by
  ``kvm_mmu_faultin_pfn`` (``mmu_invalidate_retry_gfn_unsafe``);
- the memory-attributes xarray (``mem_attr_private``) — stored by
  ``kvm_vm_set_mem_attributes`` between its two write-locked sections, read by the fault;
- ``slot->flags`` — flipped by ``kvm_mmu_slot_apply_flags`` without mmu_lock;
- the memslots themselves (``kvm->memslots``: the gfn tree a fault looks its slot up in) —
  replaced by a memslot update between its SRCU waits, read by every lookup
  (``("vm", "memslots")``); a slot an update installs is tracked like the others;
- guest_memfd's folios — punched by ``kvm_gmem_punch_hole`` outside mmu_lock, allocated by
  ``kvm_gmem_get_pfn`` in the fault;
- the host page tables behind a memslot — read by the fault's ``hva_to_pfn``, rewritten by a
  host page migration (the ``host_migrate`` op notes its write);
- the page-table frame allocator (``Kvm.alloc_pt_pfn`` and its free list): in explorer runs
  a freed table's frame backs the next table, so which frame a table gets depends on the
  order of allocations and frees (``("vm", "pt_alloc")``);
- ``root->role.invalid`` — set by ``kvm_tdp_mmu_invalidate_roots`` (write lock), read by the
  fault's ``is_page_fault_stale`` and ``kvm_mmu_reload`` at the next attempt; one key for all
  roots (``("vm", "roots_invalid")``: only invalidation writes it).  Without it a fault that
  saw its root die parks at RETRY_WAIT although its next attempt reloads the root;
- ``sp->nx_huge_page_disallowed`` — cleared by NX recovery and ``tdp_mmu_unlink_sp``, read by
  ``disallowed_hugepage_adjust``, all under the *shared* mmu_lock (``("sp", pfn, "nx")``);
- the vCPU mode protocol (``vcpu->mode``, requests, and the CPU side beside them: in guest,
  interrupts off, busy, IPI pending) — ``("vcpu", id, field)``; a wait for an IPI
  acknowledgement reads what its condition read (``Engine._runnable``);
- RCU's per-CPU read-side nesting and its callback queue — ``call_rcu`` reads every CPU's
  nesting (a reader that entered first delays the free), ``rcu_read_lock``/``_unlock`` write
  their own CPU's (``("rcu", cpu)``), and an unlock that ends a grace period runs the queue
  (``("rcu",)`` written).

- the TDX module's try-locks (TDR, OP_STATE, S-EPT tree, TD epoch, PAMT entries, S-EPT entry
  locks) — a SEAMCALL takes them in the step before its scheduling point and releases them
  in the step after it, so a second SEAMCALL between the two gets TDX_OPERAND_BUSY;
  ``("tdx_lock", ...)``: a shared acquire (or a failed shared try) reads, an exclusive try
  (successful or not) and every release of it write, so shared holders commute;
- the module's TD_EPOCH and REFCOUNT[2] — read outside any epoch-keyed step by REMOVE's /
  SEPT.REMOVE's ``is_tlb_tracked``, BLOCK's BEPOCH store and TRACK's check (``KEY_EPOCH``
  read; every write of them is inside a step keyed ``KEY_EPOCH`` written).

Without them DPOR would treat, e.g., a fault's attribute check and the conversion's store as
independent and skip one order.  The tracker swaps the classes of those objects (for this
execution's objects only) for subclasses that report each access as ``(key, write)`` into the
engine's per-step list.  The model code is not copied or changed.

A second, separate use of class swaps is the data-race check (``RaceDetector``, KCSAN's job
in the kernel): the fields ``tdp_mmu_pages_lock`` protects are not shared-memory steps of
the model at all (each list operation is atomic in Python), so a list touched outside the
lock can only be seen by asking which locks the touching thread held.

Missing one of these is unsound, not just imprecise: DPOR takes the two orders of an
untracked pair for one and never runs the other (on nx_recovery, DPOR without the RCU and
SP keys missed 31 of the 45 traces bounded DFS reaches at preemption bound 1).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from tdpsim.model.kvm import Kvm, KvmVcpu
from tdpsim.model.locking import Rcu
from tdpsim.model.memslot import GuestMemfd, HostBacking, KvmMemorySlot, RangeSet
from tdpsim.model.mmu_internal import KvmMmuPage, KvmMmuPageRole
from tdpsim.model.tdx_module.locks import CallCtx
from tdpsim.model.tdx_module.module import KEY_EPOCH, TdxModule

KEY_INVALIDATE = ("vm", "mmu_invalidate")
KEY_ATTRS = ("vm", "mem_attributes")
KEY_ROOTS_INVALID = ("vm", "roots_invalid")


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


# Lockset of one access: (tdp_mmu_pages_lock held, mmu_lock held: 0 no, 1 read, 2 write).
_MMU_HELD = ("", "mmu_lock read", "mmu_lock write")


class RaceDetector:
    """KCSAN for the fields ``kvm->arch.tdp_mmu_pages_lock`` protects (kvm_host.h: "Protects
    accesses to the following fields when the MMU lock is held in read mode: tdp_mmu_roots,
    ..., possible_nx_huge_pages ...; strictly speaking it is redundant to acquire this lock
    when the thread holds the MMU lock in write mode").

    Eraser-style lockset, pairwise: each access records the locks its CPU holds; two accesses
    by different threads, at least one a write, race unless both held tdp_mmu_pages_lock or
    one held mmu_lock for write while the other held mmu_lock at all.  No happens-before is
    needed beyond that: the model's threads all start together and meet only through locks,
    so two such accesses could always have run in either order.  The first race is kept
    (``found``); the engine fails the execution with DATA_RACE at the end of that step.
    Marked accesses are not reported, as KCSAN does not: the RCU readers of the roots
    (``list_for_each_entry_rcu``) and ``nx_huge_pages_to_zap``'s ``READ_ONCE(nr_pages)``
    (the list's ``len``).  One per process, like ``TRACKER``."""

    __slots__ = ("kvm", "names", "seen", "found")

    def __init__(self) -> None:
        self.kvm: Any = None
        self.names: list[str] = []
        self.seen: dict = {}
        self.found: Optional[str] = None

    def start(self, kvm: Any, names: list[str]) -> None:
        self.kvm, self.names, self.seen, self.found = kvm, names, {}, None

    def stop(self) -> None:
        self.kvm = None

    def access(self, field: str, write: bool) -> None:
        kvm = self.kvm
        if kvm is None or self.found is not None:
            return
        cpu = kvm.sched.cpu
        pages = kvm.tdp_mmu_pages_lock.owner == cpu
        lock = kvm.mmu_lock
        mmu = 2 if lock.write_owner == cpu else 1 if lock.read_owners.get(cpu, 0) > 0 else 0
        seen = self.seen.setdefault(field, {})
        for (tid, w, p, m), site in seen.items():
            if tid == cpu or not (w or write) or (p and pages) or (m == 2 and mmu) \
                    or (mmu == 2 and m):
                continue
            self.found = (f"data race on {field}: {self._what(cpu, write, pages, mmu, _site())}"
                          f" vs {self._what(tid, w, p, m, site)}")
            return
        key = (cpu, write, pages, mmu)
        if key not in seen:
            seen[key] = _site()

    def _what(self, cpu: int, write: bool, pages: bool, mmu: int, site: str) -> str:
        held = [h for h in ("tdp_mmu_pages_lock" if pages else "", _MMU_HELD[mmu]) if h]
        name = self.names[cpu] if 0 <= cpu < len(self.names) else f"cpu {cpu}"
        return (f"{'write' if write else 'read'} by {name} in {site} "
                f"(holding {', '.join(held) or 'no lock'})")


RACES = RaceDetector()


def _site() -> str:
    """The innermost model functions making the access (the caller's caller on)."""
    f = sys._getframe(3)
    out: list[str] = []
    while f is not None and len(out) < 3:
        name = f.f_code.co_name
        if f.f_globals.get("__name__", "").startswith("tdpsim.model") \
                and name != "possible_nx_huge_pages" and (not out or out[-1] != name):
            out.append(name)
        f = f.f_back
    return " <- ".join(out) or "?"


class TrackedNxList(list):
    """``kvm->arch.possible_nx_huge_pages[].pages``: every plain access is checked for
    races (``list_empty`` is ``not``; ``len`` stands for the ``READ_ONCE``'d ``nr_pages``)."""

    FIELD = "kvm->arch.possible_nx_huge_pages"

    def append(self, sp: Any) -> None:
        RACES.access(self.FIELD, True)
        list.append(self, sp)

    def remove(self, sp: Any) -> None:
        RACES.access(self.FIELD, True)
        list.remove(self, sp)

    def __bool__(self) -> bool:
        RACES.access(self.FIELD, False)
        return list.__len__(self) > 0

    def __getitem__(self, i: Any) -> Any:
        RACES.access(self.FIELD, False)
        return list.__getitem__(self, i)

    def __iter__(self) -> Any:
        RACES.access(self.FIELD, False)
        return list.__iter__(self)


_INVALID = KvmMmuPageRole.invalid  # the slot descriptor


class TrackedRole(KvmMmuPageRole):
    """A ``kvm_mmu_page_role`` whose ``invalid`` reports its accesses."""

    __slots__ = ()

    @property
    def invalid(self) -> bool:  # type: ignore[override]
        TRACKER.note(KEY_ROOTS_INVALID, False)
        return _INVALID.__get__(self)

    @invalid.setter
    def invalid(self, value: bool) -> None:
        TRACKER.note(KEY_ROOTS_INVALID, True)
        _INVALID.__set__(self, value)


def _track_role(root: Any) -> None:
    """Only roots are invalidated (``kvm_tdp_mmu_invalidate_roots``)."""
    if type(root.role) is KvmMmuPageRole:
        root.role.__class__ = TrackedRole


class TrackedRoots(list):
    """``kvm->arch.tdp_mmu_roots``: ``list_add_rcu`` / ``list_del_rcu`` must be serialised
    by tdp_mmu_pages_lock (readers walk it under RCU alone: not checked)."""

    FIELD = "kvm->arch.tdp_mmu_roots"

    def insert(self, i: int, root: Any) -> None:
        RACES.access(self.FIELD, True)
        _track_role(root)
        list.insert(self, i, root)

    def append(self, root: Any) -> None:
        RACES.access(self.FIELD, True)
        _track_role(root)
        list.append(self, root)

    def remove(self, root: Any) -> None:
        RACES.access(self.FIELD, True)
        list.remove(self, root)


def _noted_field(key: tuple, attr: str) -> property:
    """A property over ``self.__dict__[attr]`` whose loads read ``key`` and stores write it."""
    def get(self: Any) -> Any:
        TRACKER.note(key, False)
        return self.__dict__[attr]

    def set_(self: Any, value: Any) -> None:
        TRACKER.note(key, True)
        self.__dict__[attr] = value

    return property(get, set_)


_INVALIDATE_FIELDS = ("mmu_invalidate_seq", "mmu_invalidate_in_progress",
                      "mmu_invalidate_range_start", "mmu_invalidate_range_end")


KEY_PT_ALLOC = ("vm", "pt_alloc")


class TrackedKvm(Kvm):
    """``Kvm`` whose invalidation fields and page-table frame allocator report their
    accesses."""

    for _name in _INVALIDATE_FIELDS:
        locals()[_name] = _noted_field(KEY_INVALIDATE, "_tracked_" + _name)
    del _name

    def alloc_pt_pfn(self) -> int:
        TRACKER.note(KEY_PT_ALLOC, True)
        return Kvm.alloc_pt_pfn(self)


class TrackedFreeFrames(list):
    """``Kvm.free_pt_pfns``: a freed table's frame returned for the next allocation."""

    __slots__ = ()

    def append(self, pfn: int) -> None:
        TRACKER.note(KEY_PT_ALLOC, True)
        list.append(self, pfn)


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


class TrackedBitmap(bytearray):
    """A memslot's dirty bitmap whose every byte access reports ``("slot", id,
    "dirty_bitmap")`` as a write: mark_page_dirty_in_slot's set_bit and the harvest's xchg
    are its only users, and the fast page fault sets bits without mmu_lock, so only this
    key orders the two.  Per access, not per lookup of ``slot->dirty_bitmap``: the kernel
    (and the model) keep the pointer across the mmu_lock section."""

    __slots__ = ("key",)

    def __getitem__(self, i: Any) -> Any:
        TRACKER.note(self.key, True)
        return bytearray.__getitem__(self, i)

    def __setitem__(self, i: Any, value: Any) -> None:
        TRACKER.note(self.key, True)
        bytearray.__setitem__(self, i, value)


def _tracked_bitmap(slot_id: int, bitmap: bytearray) -> TrackedBitmap:
    tracked = TrackedBitmap(bitmap)
    tracked.key = ("slot", slot_id, "dirty_bitmap")
    return tracked


class TrackedSlot(KvmMemorySlot):
    """A memslot whose ``flags`` report their accesses (``("slot", id, "flags")``) and
    whose dirty bitmaps are ``TrackedBitmap``s."""

    __slots__ = ()

    @property
    def dirty_bitmap(self) -> bytearray:  # type: ignore[override]
        return _SLOT_BITMAP.__get__(self)

    @dirty_bitmap.setter
    def dirty_bitmap(self, value: bytearray) -> None:
        # A slot copied for a flags-only change shares its bitmap, as the kernel's does.
        if type(value) is not TrackedBitmap:
            value = _tracked_bitmap(_SLOT_ID.__get__(self), value)
        _SLOT_BITMAP.__set__(self, value)

    @property
    def flags(self) -> int:  # type: ignore[override]
        TRACKER.note(("slot", _SLOT_ID.__get__(self), "flags"), False)
        return _SLOT_FLAGS.__get__(self)

    @flags.setter
    def flags(self, value: int) -> None:
        TRACKER.note(("slot", _SLOT_ID.__get__(self), "flags"), True)
        _SLOT_FLAGS.__set__(self, value)


_SLOT_ID = KvmMemorySlot.id
_SLOT_BITMAP = KvmMemorySlot.dirty_bitmap


def _track_slot(slot: KvmMemorySlot) -> None:
    if type(slot) is KvmMemorySlot:
        slot.__class__ = TrackedSlot
        slot.dirty_bitmap = slot.dirty_bitmap
    if type(slot.backing) is HostBacking:
        slot.backing.__class__ = TrackedBacking
    if type(slot.gmem) is GuestMemfd:
        slot.gmem.__class__ = TrackedGmem


KEY_MEMSLOTS = ("vm", "memslots")


class TrackedMemslots(list):
    """``kvm->memslots``: lookups read it, ``kvm_replace_memslot`` writes it."""

    __slots__ = ()

    def __iter__(self) -> Any:
        TRACKER.note(KEY_MEMSLOTS, False)
        return list.__iter__(self)

    def __getitem__(self, i: Any) -> Any:
        TRACKER.note(KEY_MEMSLOTS, False)
        return list.__getitem__(self, i)

    def insert(self, i: Any, slot: Any) -> None:
        TRACKER.note(KEY_MEMSLOTS, True)
        _track_slot(slot)
        list.insert(self, i, slot)

    def remove(self, slot: Any) -> None:
        TRACKER.note(KEY_MEMSLOTS, True)
        list.remove(self, slot)

    def __setitem__(self, i: Any, slot: Any) -> None:
        TRACKER.note(KEY_MEMSLOTS, True)
        _track_slot(slot)
        list.__setitem__(self, i, slot)


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


_NX = KvmMmuPage.nx_huge_page_disallowed  # the slot descriptor
_SPT_PFN = KvmMmuPage.spt_pfn


class TrackedMmuPage(KvmMmuPage):
    """A ``kvm_mmu_page`` whose ``nx_huge_page_disallowed`` reports its accesses."""

    __slots__ = ()

    @property
    def nx_huge_page_disallowed(self) -> bool:  # type: ignore[override]
        TRACKER.note(("sp", _SPT_PFN.__get__(self), "nx"), False)
        return _NX.__get__(self)

    @nx_huge_page_disallowed.setter
    def nx_huge_page_disallowed(self, value: bool) -> None:
        TRACKER.note(("sp", _SPT_PFN.__get__(self), "nx"), True)
        _NX.__set__(self, value)


class TrackedSpTable(dict):
    """``kvm->sp_by_pfn`` (``set_page_private``): every table registered becomes tracked."""

    __slots__ = ()

    def __setitem__(self, pfn: int, sp: KvmMmuPage) -> None:
        if type(sp) is KvmMmuPage:
            sp.__class__ = TrackedMmuPage
        dict.__setitem__(self, pfn, sp)


class TrackedNesting(dict):
    """``Rcu.nesting``: a CPU entering or leaving a read-side section writes its entry."""

    __slots__ = ()

    def __setitem__(self, cpu: int, depth: int) -> None:
        TRACKER.note(("rcu", cpu), True)
        if depth == 0:  # leaving the outermost section: ``rcu_read_unlock`` reads the queue
            TRACKER.note(Rcu.KEY, False)
        dict.__setitem__(self, cpu, depth)


class TrackedRcu(Rcu):
    """RCU whose ``call_rcu`` reads every CPU's nesting and whose callback queue is
    ``Rcu.KEY``.  The read-side points carry a key nobody writes: entering or leaving a
    section touches only its own CPU's nesting (and, leaving, the queue), as noted above."""

    __slots__ = ()
    KEY = ("rcu", "section")

    def call_rcu(self, callback: Any) -> None:
        for cpu in self.nesting:
            TRACKER.note(("rcu", cpu), False)
        TRACKER.note(Rcu.KEY, True)
        Rcu.call_rcu(self, callback)

    def _quiescent(self, cpu: int) -> None:
        TRACKER.note(Rcu.KEY, True)
        Rcu._quiescent(self, cpu)


def _vcpu_field(name: str, also_exit: bool) -> property:
    """A ``vcpu`` field of the mode protocol, keyed ``("vcpu", id, name)`` (``vcpu->mode`` is
    ``vcpu.mode_key``, the key of the protocol's points); a write of what ``exit_done``
    reads is also a write of ``vcpu.exit_key``, the key that wait's point names."""
    slot = getattr(KvmVcpu, name)

    def get(self: Any) -> Any:
        if TRACKER.sink is not None:
            TRACKER.note(("vcpu", _VCPU_ID.__get__(self), name), False)
        return slot.__get__(self)

    def set_(self: Any, value: Any) -> None:
        if TRACKER.sink is not None:  # (None while a snapshot restores the slots)
            TRACKER.note(("vcpu", _VCPU_ID.__get__(self), name), True)
            if also_exit:
                TRACKER.note(_EXIT_KEY.__get__(self), True)
        slot.__set__(self, value)

    return property(get, set_)


_VCPU_ID = KvmVcpu.vcpu_id
_EXIT_KEY = KvmVcpu.exit_key
_REQ_KEY = KvmVcpu.req_key
_REQUESTS = KvmVcpu.requests


class TrackedVcpu(KvmVcpu):
    """A vCPU whose mode-protocol fields (``vcpu->mode`` and the CPU side the model keeps
    beside it) and request bits report their accesses, wherever the scheduling point around
    them is: the kicker's ``kvm_request_needs_ipi`` reads ``mode`` in its BARRIER step and
    the vCPU's ``kvm_vcpu_exit_request`` reads it in its own."""

    __slots__ = ()

    mode = _vcpu_field("mode", False)
    ipi_pending = _vcpu_field("ipi_pending", False)
    guest_busy = _vcpu_field("guest_busy", False)
    in_guest = _vcpu_field("in_guest", True)
    irqs_disabled = _vcpu_field("irqs_disabled", True)

    @property
    def requests(self) -> set:  # type: ignore[override]
        TRACKER.note(_REQ_KEY.__get__(self), False)
        return _REQUESTS.__get__(self)

    @requests.setter
    def requests(self, value: set) -> None:
        if TRACKER.sink is not None:
            TRACKER.note(_REQ_KEY.__get__(self), True)
        _REQUESTS.__set__(self, value)

    def kvm_make_request(self, req: str) -> None:
        TRACKER.note(_REQ_KEY.__get__(self), True)
        KvmVcpu.kvm_make_request(self, req)

    def kvm_check_request(self, req: str) -> bool:
        if req in _REQUESTS.__get__(self):
            TRACKER.note(_REQ_KEY.__get__(self), True)
        return KvmVcpu.kvm_check_request(self, req)


class TrackedCallCtx(CallCtx):
    """A SEAMCALL/TDCALL lock context whose try-locks report their footprints: each acquire
    attempt in the step that makes it, and each held lock again at ``close`` after the call's
    scheduling point, in the step that releases it (the EXIT label)."""

    __slots__ = ("_held",)

    def __init__(self, sched: Any, kind: str, key: Any, write: bool) -> None:
        CallCtx.__init__(self, sched, kind, key, write)
        self._held: list = []

    def _try(self, key: tuple, exclusive: bool, ok: bool) -> bool:
        TRACKER.note(key, exclusive)
        if ok:
            self._held.append((key, exclusive))
        return ok

    def lock(self, lk: Any, exclusive: bool) -> bool:
        return self._try(("tdx_lock", lk.name), exclusive, CallCtx.lock(self, lk, exclusive))

    def lock_entry_host(self, page: Any, idx: int) -> bool:
        return self._try(("tdx_lock", "sept", page.level, page.gfn_of(idx)), True,
                         CallCtx.lock_entry_host(self, page, idx))

    def lock_entry_guest(self, page: Any, idx: int) -> bool:
        return self._try(("tdx_lock", "sept", page.level, page.gfn_of(idx)), True,
                         CallCtx.lock_entry_guest(self, page, idx))

    def lock_pamt(self, pamt: Any, pfn: int, exclusive: bool) -> bool:
        return self._try(("tdx_lock", "pamt", pfn), exclusive,
                         CallCtx.lock_pamt(self, pamt, pfn, exclusive))

    def close(self) -> None:
        self.exit_point()  # the releases belong to the step after the call's point
        for key, exclusive in self._held:
            TRACKER.note(key, exclusive)
        self._held.clear()
        CallCtx.close(self)


class TrackedTdxModule(TdxModule):
    """The TDX module with footprint-reporting try-locks, TD_EPOCH and REFCOUNT."""

    call_ctx = TrackedCallCtx
    td_epoch = _noted_field(KEY_EPOCH, "td_epoch")
    refcount = _noted_field(KEY_EPOCH, "refcount")


def track_cpus(kvm: Kvm, ncpus: int) -> None:
    """Give every CPU an RCU nesting entry before the run, so ``call_rcu`` reads the entry of
    a CPU that has not entered a read-side section yet (it may enter first)."""
    nesting = kvm.rcu.nesting
    for cpu in range(ncpus):
        if cpu not in nesting:
            dict.__setitem__(nesting, cpu, 0)


def track(kvm: Kvm) -> Tracker:
    """Start tracking the unannotated shared fields of one VM (after its setup ran)."""
    kvm.sp_by_pfn = TrackedSpTable(kvm.sp_by_pfn)
    kvm.possible_nx_huge_pages = [TrackedNxList(pages) for pages in kvm.possible_nx_huge_pages]
    kvm.tdp_mmu_roots = TrackedRoots(kvm.tdp_mmu_roots)
    kvm.free_pt_pfns = TrackedFreeFrames(kvm.free_pt_pfns)
    for sp in kvm.sp_by_pfn.values():
        if type(sp) is KvmMmuPage:
            sp.__class__ = TrackedMmuPage
    for root in kvm.tdp_mmu_roots:
        _track_role(root)
    kvm.rcu.nesting = TrackedNesting(kvm.rcu.nesting)
    kvm.rcu.__class__ = TrackedRcu
    for vcpu in kvm.vcpus:
        vcpu.__class__ = TrackedVcpu
    for name in _INVALIDATE_FIELDS:
        kvm.__dict__["_tracked_" + name] = kvm.__dict__.pop(name)
    kvm.__class__ = TrackedKvm
    kvm.mem_attr_private.__class__ = TrackedRangeSet
    for slot in kvm.memslots:
        _track_slot(slot)
    kvm.memslots = TrackedMemslots(kvm.memslots)
    module = getattr(kvm.x86_ops, "module", None)
    if type(module) is TdxModule:
        module.__class__ = TrackedTdxModule
    return TRACKER
