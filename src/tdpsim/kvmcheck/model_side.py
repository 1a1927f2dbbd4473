"""Run a :class:`~tdpsim.kvmcheck.host_matrix.HostScenario` through the model.

The same guest as on the host (:class:`~tdpsim.kvmcheck.vm.TouchGuest`'s layout: system
slot at GPA 0 with code, stack and the identity page tables built by the same
:class:`~tdpsim.kvmcheck.guest.IdentityPageTables`; the window slot), the same warm-up and
the same phases as ``host_matrix._run_once``, producing :class:`PhaseResult` values of the
same shape (``pages`` relative to the post-warm-up baseline, ``counters`` with
``pf_taken``/``pf_fixed``, ``dirty_pages``).

Which MMU: the host's ``kvm.tdp_mmu`` parameter; ``Y`` → the TDP MMU model
(``tdpsim.model.tdp_mmu`` via ``kvm_mmu_page_fault``), ``N`` → the shadow MMU model
(:mod:`tdpsim.model.shadow_mmu`).  ``nx_huge_pages`` and ``eager_page_split`` come from
the parameters as well.

The host's THP state is an *input*: when a :class:`HostResult` is given, each phase's
measured ``host_huge_frames`` says which 2 MiB host frames are huge (the model's
``HostBacking``); without one it is derived from the scenario (THP on → every frame huge;
a ``dontneed``/``mremap`` split makes the split frames small).  A split is delivered to
the model as the mmu-notifier invalidation of that frame's 2 MiB.

Pure: no /dev/kvm, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from ..model.kvm import KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM, Kvm
from ..model.kvm_main import (KvmUserspaceMemoryRegion2, id_to_memslot, kvm_gmem_punch_hole,
                              kvm_mmu_notifier_invalidate_range, kvm_mmu_slot_apply_flags,
                              kvm_recover_nx_huge_pages, kvm_set_memory_region,
                              kvm_vm_ioctl_set_memory_region)
from ..model.memslot import (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMORY_ATTRIBUTE_PRIVATE, GuestMemfd,
                             HostBacking, KvmMemorySlot)
from ..model.mmu_fault import kvm_mmu_load, kvm_mmu_reload
from ..model.policy import Policy
from ..model.profile import DEFAULT_PROFILE, PROFILES, KernelProfile
from ..model.shadow_mmu import ShadowMmu
from ..model.svm import npt_access
from ..model.spte import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K, SpteMasks
from ..model.dirty_log import (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
                               KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, kvm_dirty_bitmap_bytes)
from ..model.ioctl import (KvmPreFaultMemory, kvm_vcpu_pre_fault_memory,
                           kvm_vm_ioctl_clear_dirty_log, kvm_vm_ioctl_enable_cap,
                           kvm_vm_ioctl_get_dirty_log, kvm_vm_ioctl_set_mem_attributes)
from .guest import (ACCESS_KINDS, PAGE_2M, PAGE_4K, PTE_P, PTE_PS, IdentityPageTables,
                    page_tables_needed)
from .host_matrix import (SLOT_MOVE_DELTA, WINDOW_SLOT, HostResult, HostScenario, PageCounts,
                          PhaseResult, step_phase_names)
from .pt_window import PtWindowScenario, link_pt_in_window, pt_window_pte_bytes
from .vm import CODE_OFFSET, PT_OFFSET, STACK_TOP_OFFSET, SYS_GPA, SYS_SLOT, TouchGuest

__all__ = ["ModelResult", "mmu_kind", "kernel_profile", "guest_walk", "model_policy", "guest_page_tables",
           "host_huge_frames_by_phase", "run_model_scenario", "SHADOW", "TDP"]

_PTE_ADDR = 0x000F_FFFF_FFFF_F000
SHADOW = "shadow"
TDP = "tdp"

# Host virtual addresses of the model's memory (2 MiB aligned; pfn == hva >> 12).
SYS_HVA = 0x7F00_0000_0000
WINDOW_FRAME_HVA = 0x7F40_0000_0000
#: pfns of the window's guest_memfd pages (apart from the host memory's hva >> 12)
GMEM_PFN_BASE = 0x10_0000_0000


@dataclass(frozen=True)
class ModelResult:
    """The model's run of one scenario: same phases as :class:`HostResult`."""

    scenario: HostScenario
    mmu: str
    phases: tuple[PhaseResult, ...]
    warmup_sptes: int
    #: the model's events (``tdpsim.model.events``) per segment: ``"warmup"`` (VM set-up
    #: and warm-up), then each phase's name, cut where the host run marks its trace
    events: Mapping[str, tuple] = field(default_factory=dict, compare=False, repr=False)
    #: the SPTE format of the model's VM (what the events' SPTE values mean)
    masks: Optional[SpteMasks] = field(default=None, compare=False, repr=False)

    @property
    def final(self) -> Optional[PageCounts]:
        return self.phases[-1].pages if self.phases else None

    def phase(self, name: str) -> PhaseResult:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)


def kernel_profile(release: str) -> KernelProfile:
    """The model's profile for a kernel release (``6.1.0-50-amd64`` → ``6.1``); a
    release of no known series gets the model's default."""
    series = ".".join(release.split(".")[:2])
    return PROFILES.get(series, DEFAULT_PROFILE)


def mmu_kind(kvm_params: Mapping[str, str]) -> str:
    """``tdp_mmu=Y`` → the TDP MMU; anything else (``N``, absent) → the shadow MMU."""
    return TDP if str(kvm_params.get("tdp_mmu", "N")).upper().startswith("Y") else SHADOW


def _flag(kvm_params: Mapping[str, str], name: str, default: bool) -> bool:
    v = str(kvm_params.get(name, "Y" if default else "N")).strip().upper()
    return v in ("Y", "1", "TRUE", "FORCE")


def model_policy(kvm_params: Mapping[str, str]) -> Policy:
    """The model's switches from /sys/module/kvm/parameters (nx_huge_pages, eager split)."""
    return Policy(nx_huge_pages=_flag(kvm_params, "nx_huge_pages", False),
                  eager_page_split=_flag(kvm_params, "eager_page_split", True))


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def guest_page_tables(s: HostScenario) -> tuple[IdentityPageTables, int]:
    """The guest's page tables exactly as :class:`TouchGuest` builds them for *s* (plus
    the PT-in-window link for :class:`PtWindowScenario`); returns (tables, system slot
    size)."""
    pt_pages = page_tables_needed(s.slot_size + s.gpa_skew, PAGE_4K) + 8
    sys_size = _round_up(PT_OFFSET + pt_pages * PAGE_4K, PAGE_2M)
    pt = IdentityPageTables(SYS_GPA + PT_OFFSET, pt_pages)
    pt.map(SYS_GPA, SYS_GPA + sys_size, PAGE_4K)
    pt.map(s.gpa, s.gpa + s.slot_size, s.guest_page_size)
    if isinstance(s, PtWindowScenario):
        link_pt_in_window(pt, s.mapped_va, s.pt_gpa)
    return pt, sys_size


def _guest_reader(pt: IdentityPageTables, s: HostScenario):
    image = pt.image()
    base = pt.base_gpa
    extra: dict[int, bytes] = {}
    if isinstance(s, PtWindowScenario):
        extra[s.pt_gpa >> PAGE_SHIFT] = pt_window_pte_bytes(s, pt.user)

    def read(gpa: int) -> int:
        off = gpa - base
        if 0 <= off < len(image):
            return int.from_bytes(image[off:off + 8], "little")
        page = extra.get(gpa >> PAGE_SHIFT)
        if page is not None:
            o = gpa & 0xFFF
            return int.from_bytes(page[o:o + 8], "little")
        return 0   # the window's data pages are zeros (or ret bytes; never walked)
    return read


def guest_walk(read, cr3: int, va: int) -> list[int]:
    """The GPAs a 4-level x86-64 walk of *va* reads (PML4E, PDPTE, PDE[, PTE]), then the
    translated GPA; *read* returns the u64 at a GPA."""
    out = []
    table = cr3 & _PTE_ADDR
    for level in (4, 3, 2, 1):
        entry = table + ((va >> (12 + 9 * (level - 1))) & 0x1FF) * 8
        out.append(entry)
        pte = read(entry)
        if not pte & PTE_P:
            raise ValueError(f"guest VA {va:#x} is not mapped (level {level} entry {entry:#x})")
        size = 1 << (12 + 9 * (level - 1))
        if level == 1 or pte & PTE_PS:
            out.append((pte & _PTE_ADDR & ~(size - 1)) | (va & (size - 1)))
            return out
        table = pte & _PTE_ADDR
    raise AssertionError("unreachable")


def _nframes(s: HostScenario) -> int:
    return _round_up(s.hva_skew + s.slot_size, PAGE_2M) // PAGE_2M


def _phase_names(s: HostScenario) -> list[str]:
    if s.steps:
        return step_phase_names(s)
    names = ["touch"]
    if s.dirty_log in ("after_mapping", "after_mapping_then_disable"):
        names += ["dirty_log_on", "write_logged"]
        if s.manual_protect:
            names += ["clear_dirty_log", "write_after_clear"]
        if s.dirty_log == "after_mapping_then_disable":
            names += ["dirty_log_off", "touch_again"]
    if s.then_access:
        names.insert(1, "touch_then")
    if s.thp_split:
        names += [f"thp_split_{s.thp_split}", "touch_again"]
    if s.slot_op == "delete":
        names += ["slot_delete", "slot_create", "touch_again"]
    elif s.slot_op == "move":
        names += ["slot_move", "touch_again"]
    if s.nx_recovery_wait:
        names += ["nx_recovery", "touch_again"]
    return names


def host_huge_frames_by_phase(s: HostScenario, host: Optional[HostResult] = None
                              ) -> dict[str, tuple[bool, ...]]:
    """Per phase name, which host 2 MiB frames are huge: measured (``host``) or derived."""
    if host is not None and host.phases and not host.skipped:
        return {p.name: tuple(p.host_huge_frames) for p in host.phases}
    n = _nframes(s)
    huge = (s.thp or s.hugetlb,) * n
    out = {}
    for name in _phase_names(s):
        if name.startswith("thp_split_") and s.thp_split in ("dontneed", "mremap"):
            frames = s.split_frames or tuple(range(n))
            huge = tuple(h and i not in frames for i, h in enumerate(huge))
        out[name] = huge
    return out


# --------------------------------------------------------------------------------------
# the two engines: the same verbs on the shadow MMU and on the TDP MMU
# --------------------------------------------------------------------------------------
class _Engine:
    """A VM with the system slot and the window, and the verbs the phases use."""

    #: the vendor module whose SPTE format the VM uses
    VENDOR = "intel"

    def __init__(self, s: HostScenario, policy: Policy, huge: tuple[bool, ...],
                 profile: KernelProfile = DEFAULT_PROFILE, root_level: int = 4) -> None:
        self.s = s
        self.events: list = []
        self.kvm = Kvm(policy=policy, tracer=self.events.append, profile=profile,
                       vendor=self.VENDOR, root_level=root_level,
                       vm_type=KVM_X86_SW_PROTECTED_VM if s.private_mem else KVM_X86_DEFAULT_VM)
        self.pt, sys_size = guest_page_tables(s)
        sys_backing = HostBacking(SYS_HVA, sys_size, PG_LEVEL_4K)     # TouchGuest: thp=False
        self.sys_slot = KvmMemorySlot(SYS_SLOT, SYS_GPA >> PAGE_SHIFT, sys_size >> PAGE_SHIFT,
                                      SYS_HVA, sys_backing)
        n = _nframes(s)
        level = PG_LEVEL_2M if (s.thp or s.hugetlb) else PG_LEVEL_4K
        self.backing = HostBacking(WINDOW_FRAME_HVA, n * PAGE_2M, level)
        self.set_host_frames(huge)
        flags = KVM_MEM_LOG_DIRTY_PAGES if s.dirty_log == "before_touch" else 0
        # guest_memfd as upstream has it: 4K folios (6.12's __kvm_gmem_get_pfn reports
        # max_order 0) and no HP-v3 hva fixup in kvm_alloc_memslot_metadata
        gmem = GuestMemfd(s.slot_size >> PAGE_SHIFT, GMEM_PFN_BASE, folio_order=0) \
            if s.private_mem else None
        self.slot = KvmMemorySlot(WINDOW_SLOT, s.gpa >> PAGE_SHIFT, s.slot_size >> PAGE_SHIFT,
                                  WINDOW_FRAME_HVA + s.hva_skew, self.backing, flags=flags,
                                  gmem=gmem, gmem_hva_fixup=False)
        kvm_set_memory_region(self.kvm, self.sys_slot)
        kvm_set_memory_region(self.kvm, self.slot)

    def set_host_frames(self, huge: Sequence[bool]) -> list[int]:
        """Make the backing's huge frames *huge*; returns frames that stopped being huge."""
        first = WINDOW_FRAME_HVA >> 21
        was = set(self.backing.split_frames)
        self.backing.split_frames = {first + i for i, h in enumerate(huge) if not h}
        return sorted(f - first for f in self.backing.split_frames - was)

    def frame_gfns(self, frame: int) -> tuple[int, int]:
        """The slot gfns backed by host 2 MiB frame *frame*."""
        lo = max(WINDOW_FRAME_HVA + frame * PAGE_2M, self.slot.userspace_addr)
        hi = min(WINDOW_FRAME_HVA + (frame + 1) * PAGE_2M,
                 self.slot.userspace_addr + (self.slot.npages << PAGE_SHIFT))
        base = self.slot.base_gfn
        return (base + ((lo - self.slot.userspace_addr) >> PAGE_SHIFT),
                base + ((hi - self.slot.userspace_addr) >> PAGE_SHIFT))

    def pages(self) -> PageCounts:
        return PageCounts(*self.kvm.stat.pages)

    def stats(self) -> dict[str, int]:
        st = self.kvm.vcpus[0].stat
        return {"pf_taken": st.pf_taken, "pf_fixed": st.pf_fixed}

    # verbs (per engine): access, set_dirty_logging, get_dirty_log, clear_dirty_log, unmap


class _ShadowEngine(_Engine):
    def __init__(self, s: HostScenario, policy: Policy, huge: tuple[bool, ...],
                 profile: KernelProfile = DEFAULT_PROFILE, root_level: int = 4) -> None:
        super().__init__(s, policy, huge, profile, root_level)
        self.mmu = ShadowMmu(self.kvm, _guest_reader(self.pt, s), self.pt.cr3)
        self.mmu.manual_dirty_log_protect = s.manual_protect

    def access(self, addr: int, kind: str) -> None:
        self.mmu.guest_access(addr, kind)

    def set_dirty_logging(self, on: bool) -> None:
        flags = self.slot.flags | KVM_MEM_LOG_DIRTY_PAGES if on else \
            self.slot.flags & ~KVM_MEM_LOG_DIRTY_PAGES
        self.mmu.kvm_mmu_slot_apply_flags(self.slot, flags)

    def get_dirty_log(self) -> int:
        return self.mmu.kvm_get_dirty_log(self.slot)

    def clear_dirty_log(self) -> None:
        self.mmu.kvm_clear_dirty_log(self.slot)

    def unmap(self, start: int, end: int) -> None:
        self.mmu.kvm_unmap_gfn_range(start, end)


class _TdpEngine(_Engine):
    """The TDP MMU under AMD NPT: the CPU's nested walk of the guest's own page tables
    goes through the NPT too, so every guest page-table page is faulted in (as a write,
    PFERR_GUEST_PAGE) before the access itself (PFERR_GUEST_FINAL)."""

    VENDOR = "amd"       # kvm_amd with NPT: the only TDP MMU host measured (the oracle)

    def __init__(self, s: HostScenario, policy: Policy, huge: tuple[bool, ...],
                 profile: KernelProfile = DEFAULT_PROFILE, root_level: int = 4) -> None:
        super().__init__(s, policy, huge, profile, root_level)
        self.vcpu = self.kvm.vcpus[0]
        self.read_guest = _guest_reader(self.pt, s)
        kvm_mmu_load(self.vcpu)
        if s.manual_protect:
            kvm_vm_ioctl_enable_cap(self.kvm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                                    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                                    | (KVM_DIRTY_LOG_INITIALLY_SET if s.initially_set else 0))

    def access(self, addr: int, kind: str) -> None:
        for entry in guest_walk(self.read_guest, self.pt.cr3, addr)[:-1]:
            self._nested(entry, "write", guest_page=True)
        self._nested(addr, kind)          # identity-mapped: the VA is the GPA

    def _nested(self, gpa: int, kind: str, guest_page: bool = False) -> None:
        npt_access(self.vcpu, gpa, kind, guest_page)

    def set_dirty_logging(self, on: bool) -> None:
        flags = self.slot.flags | KVM_MEM_LOG_DIRTY_PAGES if on else \
            self.slot.flags & ~KVM_MEM_LOG_DIRTY_PAGES
        kvm_mmu_slot_apply_flags(self.kvm, self.slot, flags)

    def get_dirty_log(self) -> int:
        """KVM_GET_DIRTY_LOG; returns how many pages were reported dirty."""
        bitmap = bytearray(kvm_dirty_bitmap_bytes(self.slot))
        kvm_vm_ioctl_get_dirty_log(self.kvm, self.slot.id, bitmap)
        return sum(bin(b).count("1") for b in bitmap)

    def clear_dirty_log(self) -> None:
        """KVM_CLEAR_DIRTY_LOG of every page the slot's bitmap holds."""
        kvm_vm_ioctl_clear_dirty_log(self.kvm, self.slot.id, 0, self.slot.npages,
                                     bytes(self.slot.dirty_bitmap))

    def unmap(self, start: int, end: int) -> None:
        kvm_mmu_notifier_invalidate_range(self.kvm, start, end)

    def reload(self) -> None:
        """``vcpu_enter_guest`` → ``kvm_mmu_reload``: a new root after a fast zap."""
        kvm_mmu_reload(self.vcpu)

    def _set_region(self, gpa: int, size: int) -> None:
        """KVM_SET_USER_MEMORY_REGION2 of the window slot (same hva, backing, flags)."""
        s = self.slot
        mem = KvmUserspaceMemoryRegion2(s.id, s.flags, gpa, size, s.userspace_addr,
                                        backing=s.backing)
        assert kvm_vm_ioctl_set_memory_region(self.kvm, mem) == 0
        if size:
            self.slot = id_to_memslot(self.kvm, s.id)

    def delete_slot(self) -> None:
        """KVM_MR_DELETE (with the slot-zap quirk: ``kvm_mmu_zap_all_fast``)."""
        self._set_region(self.slot.base_gfn << PAGE_SHIFT, 0)

    def create_slot(self) -> None:
        self._set_region(self.slot.base_gfn << PAGE_SHIFT, self.slot.npages << PAGE_SHIFT)

    def move_slot(self, gpa: int) -> None:
        """KVM_MR_MOVE: zapped like a deletion, then the slot (new lpage_info) at *gpa*."""
        self._set_region(gpa, self.slot.npages << PAGE_SHIFT)
        self.pt.map(gpa, gpa + self.s.slot_size, self.s.guest_page_size)
        self.read_guest = _guest_reader(self.pt, self.s)

    def nx_recovery(self) -> None:
        """The recovery worker with ratio 1 (:data:`NX_RECOVERY_PARAMS`): everything."""
        kvm_recover_nx_huge_pages(self.kvm, ratio=1)

    def memory_step(self, verb: str, off: int, size: int) -> None:
        """A private-memory step of the window's bytes [off, off + size): the same ioctl
        (or guest_memfd fallocate) the host row makes."""
        gpa = self.s.gpa + off
        if verb == "punch":      # guest_memfd offset 0 is the window's first gfn
            kvm_gmem_punch_hole(self.kvm, self.slot, gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT)
            return
        if verb == "prefault":
            rng = KvmPreFaultMemory(gpa, size)
            while rng.size:
                r = kvm_vcpu_pre_fault_memory(self.vcpu, rng)
                if r < 0:
                    raise ValueError(f"{self.s.name}: KVM_PRE_FAULT_MEMORY failed ({r})")
            return
        attrs = KVM_MEMORY_ATTRIBUTE_PRIVATE if verb == "private" else 0
        r = kvm_vm_ioctl_set_mem_attributes(self.kvm, gpa, size, attrs)
        if r:
            raise ValueError(f"{self.s.name}: KVM_SET_MEMORY_ATTRIBUTES failed ({r})")


# --------------------------------------------------------------------------------------
# the scenario
# --------------------------------------------------------------------------------------
def run_model_scenario(s: HostScenario, kvm_params: Optional[Mapping[str, str]] = None,
                       host: Optional[HostResult] = None,
                       profile: Optional[KernelProfile] = None,
                       root_level: int = 4) -> ModelResult:
    """Run *s* through the model chosen by *kvm_params* (default: ``host.kvm_params``,
    else the shadow MMU) with the host THP state of *host* (measured) or derived, under
    *profile* (default: the one of ``host.kernel_release``, else the model's default), with
    a *root_level* TDP root (4, or 5 for NPT under LA57)."""
    if profile is None:
        profile = kernel_profile(host.kernel_release) if host is not None else DEFAULT_PROFILE
    if kvm_params is None:
        kvm_params = host.kvm_params if host is not None and host.kvm_params else {"tdp_mmu": "N"}
    kind = mmu_kind(kvm_params)
    frames = host_huge_frames_by_phase(s, host)
    first = frames.get("touch") or next(iter(frames.values()))
    if kind != TDP and (s.slot_op or s.nx_recovery_wait or s.initially_set or s.steps):
        raise ValueError(f"{s.name}: memslot operations, NX recovery, INITIALLY_SET and "
                         f"private memory are modelled on the TDP MMU only")
    eng_cls = _TdpEngine if kind == TDP else _ShadowEngine
    eng = eng_cls(s, model_policy(kvm_params), first, profile, root_level)

    # warm-up: the loop's first instructions (code page fetch, push/pop on the stack)
    code = SYS_GPA + CODE_OFFSET + ACCESS_KINDS.index(s.access) * TouchGuest.CODE_STRIDE
    eng.access(code, "exec")
    eng.access(SYS_GPA + STACK_TOP_OFFSET - 8, "write")
    base_pages = eng.pages()
    warmup = base_pages.pages_4k + base_pages.pages_2m + base_pages.pages_1g
    last = eng.stats()
    phases: list[PhaseResult] = []
    segments: dict[str, tuple] = {}

    def cut(name: str) -> None:
        segments[name] = tuple(eng.events)
        eng.events.clear()
    cut("warmup")

    def phase(name: str, dirty: Optional[int] = None) -> None:
        nonlocal last
        now = eng.stats()
        p = eng.pages()
        pages = PageCounts(p.pages_4k - base_pages.pages_4k, p.pages_2m - base_pages.pages_2m,
                           p.pages_1g - base_pages.pages_1g)
        counters = {k: v - last[k] for k, v in now.items() if v != last[k]}
        huge = frames.get(name, tuple(not f for f in _split_mask(eng)))
        phases.append(PhaseResult(name, pages, counters, huge, dirty))
        cut(name)
        last = now

    gpa = s.gpa

    def touch(kind: Optional[str] = None) -> None:
        kind = kind or s.access
        if kind_tdp:
            eng.reload()
            # a host THP the touch itself brings back (after MADV_DONTNEED of a frame)
            eng.set_host_frames(frames.get(_next_phase_name(), eng_frames()))
            # each KVM_RUN fetches the loop and pushes: faults again after a fast zap
            eng.access(SYS_GPA + CODE_OFFSET + ACCESS_KINDS.index(kind) * TouchGuest.CODE_STRIDE,
                       "exec")
            eng.access(SYS_GPA + STACK_TOP_OFFSET - 8, "write")
        for i in range(s.touches):
            eng.access(gpa + i * s.stride, kind)

    kind_tdp = kind == TDP
    names = iter(_phase_names(s))
    pending = [next(names)]

    def _next_phase_name() -> str:
        return pending[0]

    def eng_frames() -> tuple[bool, ...]:
        return tuple(not f for f in _split_mask(eng))

    def step(name: str, dirty: Optional[int] = None) -> None:
        phase(name, dirty)
        pending[0] = next(names, "")

    if s.steps:
        for name, st in zip(step_phase_names(s), s.steps):
            if st[0] == "touch":
                touch(st[1] if len(st) > 1 else None)
            else:
                eng.memory_step(*st)
            step(name)
    else:
        touch()
        step("touch", eng.get_dirty_log() if s.dirty_log == "before_touch" else None)
    if s.then_access:
        touch(s.then_access)
        step("touch_then")
    if s.dirty_log in ("after_mapping", "after_mapping_then_disable"):
        eng.set_dirty_logging(True)
        step("dirty_log_on")
        touch("write")
        step("write_logged", eng.get_dirty_log())
        if s.manual_protect:
            eng.clear_dirty_log()
            step("clear_dirty_log")
            touch("write")
            step("write_after_clear", eng.get_dirty_log())
        if s.dirty_log == "after_mapping_then_disable":
            eng.set_dirty_logging(False)
            step("dirty_log_off")
            touch()
            step("touch_again")
    if s.thp_split:
        name = f"thp_split_{s.thp_split}"
        split_now = frames.get(name, first)
        # the host splits (or frees) a THP: the mmu notifier covers the whole 2 MiB
        for f in eng.set_host_frames(split_now):
            lo, hi = eng.frame_gfns(f)
            if hi > lo:
                eng.unmap(lo, hi)
        step(name)
        touch()
        step("touch_again")
    if s.slot_op == "delete":
        eng.delete_slot()
        step("slot_delete")
        eng.create_slot()
        step("slot_create")
        touch()
        step("touch_again")
    elif s.slot_op == "move":
        gpa = s.gpa + SLOT_MOVE_DELTA
        eng.move_slot(gpa)
        step("slot_move")
        touch()
        step("touch_again")
    if s.nx_recovery_wait:
        eng.nx_recovery()
        step("nx_recovery")
        touch("read")
        step("touch_again")
    return ModelResult(s, kind, tuple(phases), warmup, segments, eng.kvm.masks)


def _split_mask(eng: _Engine) -> list[bool]:
    first = WINDOW_FRAME_HVA >> 21
    return [first + i in eng.backing.split_frames for i in range(_nframes(eng.s))]
