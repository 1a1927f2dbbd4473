"""Run a matrix of tiny guests on the host's KVM and collect KVM's own statistics.

Each :class:`HostScenario` describes one guest: a test memslot ("window") with a given
size, GPA and host-address skew, host backing (THP on/off, hugetlbfs), guest page size,
access kind and a sequence of events (dirty logging on/off, host THP split).  The
scenario is executed in a fresh VM as *phases*; after each phase the VM and vCPU
statistics are sampled, so that :class:`HostResult` carries, per phase,

* ``pages``: the number of leaf SPTEs of each size (``pages_4k``/``pages_2m``/``pages_1g``)
  relative to the baseline taken after a warm-up run (code, stack and page tables are
  faulted in by the warm-up, so the numbers describe the test window only), and
* ``counters``: the change of every statistic during that phase (pf_fixed, exits, ...).

Everything returned is a plain dataclass, so the model side can build the same
structures and compare with ``==``.  Nothing here prints.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping

from . import uapi as u
from .guest import PAGE_1G, PAGE_2M, PAGE_4K
from .vm import (DEFAULT_KVM_PATH, GuestMemfd, KvmSystem, HostMemory, NativeMsrProbe,
                 TouchGuest, fill_window, hugetlb_free_pages, kvm_vendor_modules,
                 read_module_params, write_module_param)

__all__ = [
    "PageCounts", "HostScenario", "PhaseResult", "NativeExecution", "HostResult",
    "DEFAULT_MATRIX", "TDP_ROWS", "run_host_scenario", "run_host_matrix", "host_facts",
    "DIRTY_LOG_MODES", "THP_SPLIT_METHODS", "WINDOW_SLOT", "PAGE_STATS", "Marker",
    "STEP_VERBS", "PRIVATE_ROWS", "step_phase_names",
]

MiB = 1 << 20
WINDOW_SLOT = 1
DEFAULT_WINDOW_GPA = 1 << 30
PAGE_STATS = ("pages_4k", "pages_2m", "pages_1g")

#: dirty-logging timelines a scenario can ask for
DIRTY_LOG_MODES = (
    "off",                  # never
    "before_touch",         # KVM_MEM_LOG_DIRTY_PAGES set when the slot is created
    "after_mapping",        # touch -> enable logging -> write everything
    "after_mapping_then_disable",   # ... -> disable logging -> touch everything again
)
THP_SPLIT_METHODS = ("dontneed", "mremap", "nohugepage", "dontneed_frame")
#: memslot operations after the first touch: delete (then create again) or move
SLOT_OPS = ("delete", "move")
#: what an NX-recovery row sets while it waits (restored after)
NX_RECOVERY_PARAMS = (("nx_huge_pages_recovery_ratio", "1"),
                      ("nx_huge_pages_recovery_period_ms", "100"))
#: where "move" puts the window (its old GPA + this)
SLOT_MOVE_DELTA = 1 << 30
#: what a scripted row does after the warm-up, one phase per step (offsets and sizes in
#: bytes of the window, which is the guest_memfd's offset 0 too):
#: ``("private" | "shared", off, size)`` KVM_SET_MEMORY_ATTRIBUTES,
#: ``("punch", off, size)`` fallocate(PUNCH_HOLE) on the guest_memfd,
#: ``("prefault", off, size)`` KVM_PRE_FAULT_MEMORY, ``("touch", access)`` the loop
STEP_VERBS = ("private", "shared", "punch", "prefault", "touch")
_PRIVATE_VERBS = ("private", "shared", "punch")


@dataclass(frozen=True, order=True)
class PageCounts:
    """Leaf SPTE counts by size (KVM VM stats pages_4k / pages_2m / pages_1g)."""

    pages_4k: int = 0
    pages_2m: int = 0
    pages_1g: int = 0

    @classmethod
    def from_stats(cls, stats: Mapping[str, int], base: Mapping[str, int] | None = None) -> "PageCounts":
        base = base or {}
        return cls(*(int(stats.get(k, 0)) - int(base.get(k, 0)) for k in PAGE_STATS))

    def __str__(self) -> str:
        parts = [f"{n} x {sz}" for n, sz in ((self.pages_1g, "1G"), (self.pages_2m, "2M"),
                                              (self.pages_4k, "4K")) if n]
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class HostScenario:
    """One guest configuration of the matrix (see module doc).

    ``slot_size`` is the test memslot's size; the host memory behind it is rounded up to
    whole 2 MiB frames (so a tail frame can be a THP on the host even when the slot ends
    mid-frame).  ``gpa_skew``/``hva_skew`` shift the slot's GPA / host address by that
    many bytes from 2 MiB alignment.  ``split_frames`` are host 2 MiB frame indices (as
    in ``host_huge_frames``) split with ``thp_split`` after the first touch; empty =
    every frame.  ``expected`` is the window's final SPTE census that the host is known
    to produce (from earlier measurements), or None.
    """

    name: str
    slot_size: int = 16 * MiB
    gpa_skew: int = 0
    hva_skew: int = 0
    thp: bool = True
    hugetlb: bool = False
    guest_page_size: int = PAGE_2M
    access: str = "write"
    stride: int = PAGE_4K
    dirty_log: str = "off"
    manual_protect: bool = False
    thp_split: str | None = None
    split_frames: tuple[int, ...] = (0,)
    prefault: bool = True
    window_gpa: int = DEFAULT_WINDOW_GPA
    expected: PageCounts | None = None
    description: str = ""
    #: KVM module parameters the row runs under (``name`` = kvm's, ``module.name``
    #: otherwise), written to /sys/module/*/parameters by the oracle's guest runner
    module_params: tuple[tuple[str, str], ...] = ()
    #: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with KVM_DIRTY_LOG_INITIALLY_SET
    initially_set: bool = False
    #: after the first touch, touch again with this access ("touch_then" phase)
    then_access: str | None = None
    #: seconds to wait after the touch phases for the NX recovery worker ("nx_recovery"),
    #: then touch again ("touch_again")
    nx_recovery_wait: float = 0.0
    slot_op: str | None = None
    #: a KVM_X86_SW_PROTECTED_VM whose window is also bound to a guest_memfd
    #: (KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD): the private side
    private_mem: bool = False
    #: a script of :data:`STEP_VERBS` run instead of the first touch (and nothing else)
    steps: tuple[tuple, ...] = ()

    def __post_init__(self) -> None:
        if self.dirty_log not in DIRTY_LOG_MODES:
            raise ValueError(f"dirty_log must be one of {DIRTY_LOG_MODES}")
        if self.thp_split is not None and self.thp_split not in THP_SPLIT_METHODS:
            raise ValueError(f"thp_split must be None or one of {THP_SPLIT_METHODS}")
        if self.access not in ("write", "read", "exec") or self.then_access not in (
                None, "write", "read", "exec"):
            raise ValueError("access and then_access must be write, read or exec")
        if self.slot_op is not None and self.slot_op not in SLOT_OPS:
            raise ValueError(f"slot_op must be None or one of {SLOT_OPS}")
        if self.initially_set and not self.manual_protect:
            raise ValueError("initially_set needs manual_protect")
        if self.guest_page_size not in (PAGE_4K, PAGE_2M, PAGE_1G):
            raise ValueError("guest_page_size must be 4 KiB, 2 MiB or 1 GiB")
        if self.window_gpa % PAGE_1G and self.guest_page_size == PAGE_1G:
            raise ValueError("1 GiB guest pages need a 1 GiB aligned window_gpa")
        for st in self.steps:
            if not st or st[0] not in STEP_VERBS:
                raise ValueError(f"a step is one of {STEP_VERBS} with its arguments, not {st!r}")
            if st[0] in _PRIVATE_VERBS and not self.private_mem:
                raise ValueError(f"step {st[0]} needs private_mem")

    @property
    def gpa(self) -> int:
        return self.window_gpa + self.gpa_skew

    @property
    def touches(self) -> int:
        return self.slot_size // self.stride


@dataclass(frozen=True)
class PhaseResult:
    """State after one phase of a scenario."""

    name: str
    pages: PageCounts                      # window SPTEs vs. the post-warm-up baseline
    counters: Mapping[str, int]            # change of every stat during this phase (non-zero only)
    host_huge_frames: tuple[bool, ...]     # PAGEMAP_SCAN: host 2 MiB frame mapped huge?
    dirty_pages: int | None = None         # set bits from KVM_GET_DIRTY_LOG, when read

    def signature(self) -> tuple:
        """The deterministic part, used to compare repeated runs."""
        return (self.name, self.pages, self.host_huge_frames, self.dirty_pages)


@dataclass(frozen=True)
class NativeExecution:
    """Did the undocumented native-execution MSR (0x4b564d10, bit 0) take effect?

    ``took_effect`` is measured, not inferred from the MSR: the warm-up run created
    SPTEs (an emulating vCPU creates none) and emulated fewer instructions than the
    loop has.
    """

    msr: int
    requested: bool
    accepted: bool
    readback: int | None
    listed_in_msr_index_list: bool
    took_effect: bool
    warmup_insn_emulation: int
    warmup_sptes: int
    error: str | None = None


@dataclass(frozen=True)
class HostResult:
    scenario: HostScenario
    skipped: str | None = None
    phases: tuple[PhaseResult, ...] = ()
    stat_deltas: Mapping[str, int] = field(default_factory=dict)   # baseline -> end, non-zero
    native: NativeExecution | None = None
    kvm_params: Mapping[str, str] = field(default_factory=dict)
    vendor_modules: tuple[str, ...] = ()
    kernel_release: str = ""
    repeats: int = 1
    repeatable: bool | None = None
    repeat_mismatches: tuple[str, ...] = ()

    @property
    def final(self) -> PageCounts | None:
        return self.phases[-1].pages if self.phases else None

    @property
    def pages_4k(self) -> int | None:
        return self.final.pages_4k if self.final else None

    @property
    def pages_2m(self) -> int | None:
        return self.final.pages_2m if self.final else None

    @property
    def pages_1g(self) -> int | None:
        return self.final.pages_1g if self.final else None

    def phase(self, name: str) -> PhaseResult:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def matches_expected(self) -> bool | None:
        if self.skipped or self.scenario.expected is None:
            return None
        return self.final == self.scenario.expected

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------
_K4 = PAGE_4K
DEFAULT_MATRIX: tuple[HostScenario, ...] = (
    # --- the seven rows observed when this host was first probed -----------------------
    HostScenario("aligned", expected=PageCounts(0, 8, 0),
                 description="16 MiB slot, GPA and host address 2 MiB aligned, THP, 2M guest pages"),
    HostScenario("gpa-skew-4k", gpa_skew=_K4, expected=PageCounts(4096, 0, 0),
                 description="slot GPA +4 KiB: GPA and host address disagree mod 2 MiB"),
    HostScenario("hva-skew-4k", hva_skew=_K4, expected=PageCounts(4096, 0, 0),
                 description="host address +4 KiB: GPA and host address disagree mod 2 MiB"),
    HostScenario("both-skew-4k", gpa_skew=_K4, hva_skew=_K4, expected=PageCounts(512, 7, 0),
                 description="GPA and host address both +4 KiB: 7 whole frames + partial head/tail"),
    HostScenario("dirty-log-before-touch", dirty_log="before_touch", expected=PageCounts(4096, 0, 0),
                 description="KVM_MEM_LOG_DIRTY_PAGES set before the first touch"),
    HostScenario("thp-off", thp=False, expected=PageCounts(4096, 0, 0),
                 description="host memory MADV_NOHUGEPAGE"),
    HostScenario("guest-4k", guest_page_size=PAGE_4K, expected=PageCounts(4096, 0, 0),
                 description="guest maps the window with 4 KiB pages"),
    # --- further rows ------------------------------------------------------------------
    HostScenario("read", access="read", expected=PageCounts(0, 8, 0),
                 description="aligned, the loop reads every page"),
    HostScenario("exec", access="exec", expected=PageCounts(0, 8, 0),
                 description="aligned, window filled with ret, the loop calls every page"),
    HostScenario("tail-frame", slot_size=17 * MiB, expected=PageCounts(256, 8, 0),
                 description="17 MiB slot: the last 2 MiB frame is only half in the slot "
                             "(host THP still covers it)"),
    HostScenario("dirty-log-after-mapping", dirty_log="after_mapping", expected=PageCounts(4096, 0, 0),
                 description="touch (2M SPTEs), enable dirty logging, write every page"),
    HostScenario("dirty-log-disable-again", dirty_log="after_mapping_then_disable",
                 expected=PageCounts(0, 8, 0),
                 description="... then disable dirty logging and touch every page again"),
    HostScenario("dirty-log-manual-protect", dirty_log="after_mapping", manual_protect=True,
                 expected=PageCounts(4096, 0, 0),
                 description="as dirty-log-after-mapping with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2; "
                             "then KVM_CLEAR_DIRTY_LOG and write again"),
    HostScenario("thp-split-dontneed", thp_split="dontneed", split_frames=(0,),
                 expected=PageCounts(512, 7, 0),
                 description="touch, then MADV_DONTNEED 4 KiB of host frame 0 (PMD split), touch again"),
    HostScenario("thp-split-mremap", thp_split="mremap", split_frames=(3,),
                 expected=PageCounts(512, 7, 0),
                 description="touch, then mremap 4 KiB of host frame 3 away and back, touch again"),
    HostScenario("thp-nohugepage-after-mapping", thp_split="nohugepage", split_frames=(),
                 expected=PageCounts(0, 8, 0),
                 description="touch, then MADV_NOHUGEPAGE the whole window (does not split "
                             "existing THPs), touch again"),
    HostScenario("hugetlb-2m", hugetlb=True, expected=PageCounts(0, 8, 0),
                 description="hugetlbfs 2 MiB pages (MAP_HUGETLB); needs a non-empty pool"),
)


_NX = (("nx_huge_pages", "force"),)
_NO_EAGER = (("eager_page_split", "N"),)
#: rows only a TDP MMU host runs (the QEMU oracle): NX huge pages, dirty-log variants,
#: memslot delete / move, a freed THP, ...; appended to the check matrix there
TDP_ROWS: tuple[HostScenario, ...] = (
    HostScenario("nx-force-exec", access="exec", module_params=_NX,
                 description="kvm.nx_huge_pages=force, the loop calls every page: exec "
                             "faults may not map huge (disallowed_hugepage_adjust)"),
    HostScenario("nx-force-read", access="read", module_params=_NX,
                 description="nx_huge_pages=force, reads only: 2M, not executable"),
    HostScenario("nx-force-read-then-exec", access="read", then_access="exec",
                 module_params=_NX,
                 description="nx_huge_pages=force: read (2M NX leaves), then call every "
                             "page (each 2M leaf is replaced by a table of 4K leaves)"),
    HostScenario("nx-force-exec-recovery", access="exec", module_params=_NX,
                 nx_recovery_wait=3.0,
                 description="nx_huge_pages=force, exec (4K), then the recovery worker "
                             "with ratio 1 / period 100 ms zaps the NX-split pages; reads "
                             "map 2M again"),
    HostScenario("dirty-log-initially-set", dirty_log="after_mapping", manual_protect=True,
                 initially_set=True,
                 description="MANUAL_DIRTY_LOG_PROTECT2 | INITIALLY_SET: enabling logging "
                             "protects nothing; CLEAR splits and write-protects"),
    HostScenario("dirty-log-no-eager-split", dirty_log="after_mapping", module_params=_NO_EAGER,
                 description="kvm.eager_page_split=N: enabling logging write-protects the "
                             "2M leaves; each write faults in a 4K page"),
    HostScenario("dirty-log-no-eager-split-disable", dirty_log="after_mapping_then_disable",
                 module_params=_NO_EAGER,
                 description="eager_page_split=N, then disable logging and touch again"),
    HostScenario("dirty-log-manual-no-eager-split", dirty_log="after_mapping",
                 manual_protect=True, module_params=_NO_EAGER,
                 description="MANUAL_DIRTY_LOG_PROTECT2 with eager_page_split=N"),
    HostScenario("hugetlb-2m-dirty-log", hugetlb=True, dirty_log="after_mapping",
                 description="hugetlbfs 2 MiB pages, then dirty logging (eager split)"),
    HostScenario("memslot-delete", slot_op="delete",
                 description="touch, delete the window's memslot (kvm_mmu_zap_all_fast), "
                             "create it again, touch again"),
    HostScenario("memslot-move", slot_op="move",
                 description="touch, move the window's memslot 1 GiB up (KVM_MR_MOVE), "
                             "touch it there"),
    HostScenario("thp-dontneed-frame", thp_split="dontneed_frame", split_frames=(2,),
                 description="touch, MADV_DONTNEED all of host frame 2 (THP freed, the "
                             "mmu notifier zaps it), touch again (a new THP)"),
    HostScenario("gpa-skew-2m", gpa_skew=PAGE_2M,
                 description="slot GPA +2 MiB: GPA and host address still agree mod 2 MiB"),
    HostScenario("stride-2m", stride=PAGE_2M,
                 description="one touch per 2 MiB frame"),
    HostScenario("read-then-write", access="read", then_access="write",
                 description="read every page (writable 2M leaves), then write: no fault"),
)


_W = 16 * MiB
#: rows of a KVM_X86_SW_PROTECTED_VM (6.8+ with CONFIG_KVM_SW_PROTECTED_VM): the window's
#: private side is a guest_memfd (4K folios in 6.12: kvm_gmem_get_pfn's max_order is 0),
#: its shared side THP memory; the attributes decide which one a fault maps
#: (kvm_mmu_page_fault sets PFERR_PRIVATE_ACCESS from kvm_mem_is_private)
PRIVATE_ROWS: tuple[HostScenario, ...] = (
    HostScenario("swprot-shared", private_mem=True, steps=(("touch",),),
                 description="software-protected VM, guest_memfd slot, everything shared: "
                             "the shared side maps 2M from THP"),
    HostScenario("swprot-private", private_mem=True,
                 steps=(("private", 0, _W), ("touch",)),
                 description="everything private: kvm_faultin_pfn_private maps 4K from "
                             "guest_memfd (max_order 0)"),
    HostScenario("swprot-private-read", private_mem=True, access="read",
                 steps=(("private", 0, _W), ("touch",)),
                 description="everything private, reads only"),
    HostScenario("swprot-to-private-1m", private_mem=True,
                 steps=(("touch",), ("private", 0, MiB), ("touch",)),
                 description="touch shared (2M), convert the first 1 MiB to private (its 2M "
                             "leaf is zapped, frame 0 is MIXED), touch: 4K on both sides"),
    HostScenario("swprot-private-4k-in-2m", private_mem=True,
                 steps=(("touch",), ("private", 3 * PAGE_2M + _K4, _K4), ("touch",)),
                 description="one private 4K page in shared frame 3: the whole 2M leaf goes, "
                             "frame 3 maps 511 shared + 1 private 4K"),
    HostScenario("swprot-to-shared", private_mem=True,
                 steps=(("private", 0, _W), ("touch",), ("shared", 0, _W), ("touch",)),
                 description="private (4K), convert all back to shared: MIXED cleared, 2M again"),
    HostScenario("swprot-to-shared-half", private_mem=True,
                 steps=(("private", 0, _W), ("touch",), ("shared", _W // 2, _W // 2),
                        ("touch",)),
                 description="private, upper half back to shared: 2048 private 4K + 4 x 2M"),
    HostScenario("swprot-punch-private", private_mem=True,
                 steps=(("private", 0, _W), ("touch",), ("punch", PAGE_2M, PAGE_2M), ("touch",)),
                 description="private, punch a 2 MiB hole in the guest_memfd "
                             "(kvm_gmem_invalidate_begin zaps it), touch: new pages"),
    HostScenario("swprot-punch-shared", private_mem=True,
                 steps=(("touch",), ("punch", PAGE_2M, PAGE_2M), ("touch",)),
                 description="shared 2M leaves, punch the guest_memfd under frame 1: 6.12's "
                             "kvm_tdp_mmu_unmap_gfn_range ignores attr_filter and zaps the "
                             "shared leaf too"),
    HostScenario("swprot-punch-straddle", private_mem=True,
                 steps=(("touch",), ("punch", MiB, 2 * MiB), ("touch",)),
                 description="shared 2M leaves, punch [1 MiB, 3 MiB): both straddling leaves "
                             "are zapped whole (no cross-boundary split before v6.12's zap)"),
    HostScenario("swprot-shared-straddle", private_mem=True,
                 steps=(("touch",), ("private", PAGE_2M + _K4, _K4), ("touch",),
                        ("shared", MiB, 2 * MiB), ("touch",)),
                 description="one private page in frame 1, then [1 MiB, 3 MiB) back to shared: "
                             "frame 0's 2M leaf is zapped whole, frame 1 keeps its upper 4K "
                             "leaves; both map 2M again"),
    HostScenario("swprot-prefault-private", private_mem=True,
                 steps=(("private", 0, _W), ("prefault", 0, _W), ("touch",)),
                 description="private, KVM_PRE_FAULT_MEMORY the window (no fault stats), "
                             "touch: nothing left to fault"),
    HostScenario("swprot-prefault-shared", private_mem=True,
                 steps=(("prefault", 0, _W), ("touch",)),
                 description="KVM_PRE_FAULT_MEMORY of the shared side (2M), then write"),
    HostScenario("swprot-round-trip", private_mem=True,
                 steps=(("touch",), ("private", 0, _W), ("touch",), ("shared", 0, _W),
                        ("touch",)),
                 description="shared (2M), private (4K), shared (2M) again"),
)


def step_phase_names(s: HostScenario) -> list[str]:
    """The phase of each step: ``<index>-<verb>``."""
    return [f"{i}-{st[0]}" for i, st in enumerate(s.steps)]


# --------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------
def host_facts() -> dict:
    """Kernel release, KVM vendor modules and /sys/module/kvm*/parameters."""
    params = read_module_params("kvm")
    mods = kvm_vendor_modules()
    for m in mods:
        for k, v in read_module_params(m).items():
            params[f"{m}.{k}"] = v
    return {"kernel_release": os.uname().release, "vendor_modules": tuple(mods),
            "kvm_params": params}


def _skip_reason(s: HostScenario, kvm_path: str = DEFAULT_KVM_PATH) -> str | None:
    if s.private_mem:
        with KvmSystem(kvm_path) as kvm:
            if not kvm.supports_vm_type(u.KVM_X86_SW_PROTECTED_VM):
                return ("this KVM cannot create a KVM_X86_SW_PROTECTED_VM (KVM_CAP_VM_TYPES; "
                        "needs CONFIG_KVM_SW_PROTECTED_VM and the TDP MMU)")
    if s.hugetlb:
        need = -(-(s.hva_skew + s.slot_size) // PAGE_2M)
        free = hugetlb_free_pages(2048)
        if free < need:
            return (f"hugetlb pool has {free} free 2 MiB pages, scenario needs {need} "
                    f"(raise /proc/sys/vm/nr_hugepages to run it)")
    return None


def _diff(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for k, v in after.items():
        d = v - before.get(k, 0)
        if d:
            out[k] = d
    return out


#: instructions the warm-up run executes (push, pop, test, jz, hlt): an emulating vCPU
#: reports all of them in insn_emulation; a native one only the hlt.
_WARMUP_INSNS = 5


def _popcount(bitmap: bytes) -> int:
    return sum(bin(b).count("1") for b in bitmap)


#: a callback told each phase boundary (``"warmup"``, then each phase's name), e.g. to
#: write an ftrace marker so a trace can be cut into phases
Marker = Callable[[str], None]


def _no_marker(name: str) -> None:
    pass


def _run_once(s: HostScenario, kvm_path: str, native: bool,
              marker: Marker = _no_marker) -> tuple[tuple[PhaseResult, ...], dict, NativeExecution]:
    vm_type = u.KVM_X86_SW_PROTECTED_VM if s.private_mem else u.KVM_X86_DEFAULT_VM
    with KvmSystem(kvm_path) as kvm, TouchGuest(kvm, s.access, native=native, vm_type=vm_type,
                                                max_window_span=s.slot_size + s.gpa_skew) as g:
        mem = HostMemory(s.slot_size, hva_skew=s.hva_skew, thp=None if s.hugetlb else s.thp,
                         hugetlb=s.hugetlb)
        gmem = g.vm.create_guest_memfd(s.slot_size) if s.private_mem else None
        try:
            if s.prefault:       # ret bytes wherever the loop will call
                fill_window(mem, "exec" if "exec" in (s.access, s.then_access) else s.access)
            if s.manual_protect:
                g.vm.enable_manual_dirty_log_protect(initially_set=s.initially_set)
            flags = u.KVM_MEM_LOG_DIRTY_PAGES if s.dirty_log == "before_touch" else 0
            g.add_window(WINDOW_SLOT, s.gpa, mem, guest_page_size=s.guest_page_size, flags=flags,
                         gmem=gmem)
            g.finalize()

            # warm-up: faults in code, stack and page tables, touches nothing in the window
            pre = g.stats()
            g.touch(s.gpa, 0)
            base = g.stats()
            marker("warmup")
            warm = _diff(base, pre)
            sptes = sum(base.get(k, 0) for k in PAGE_STATS)
            probe: NativeMsrProbe | None = g.native
            nat = NativeExecution(
                msr=probe.msr if probe else 0x4B564D10, requested=native,
                accepted=bool(probe and probe.accepted), readback=probe.readback if probe else None,
                listed_in_msr_index_list=bool(probe and probe.listed),
                took_effect=sptes > 0 and warm.get("insn_emulation", 0) < _WARMUP_INSNS,
                warmup_insn_emulation=warm.get("insn_emulation", 0), warmup_sptes=sptes,
                error=probe.error if probe else None)

            phases: list[PhaseResult] = []
            last = base

            def phase(name: str, dirty: int | None = None) -> None:
                nonlocal last
                now = g.stats()
                phases.append(PhaseResult(name, PageCounts.from_stats(now, base), _diff(now, last),
                                          mem.huge_frames(), dirty))
                marker(name)
                last = now

            gpa = s.gpa

            def touch(access: str | None = None) -> None:
                g.touch(gpa, s.touches, s.stride, access)

            if s.steps:
                for name, st in zip(step_phase_names(s), s.steps):
                    _run_step(g, gmem, s, st, touch)
                    phase(name)
            else:
                touch()
                # before_touch: the dirty log is read before the phase ends (and its trace cut)
                phase("touch", _popcount(g.vm.get_dirty_log(WINDOW_SLOT))
                      if s.dirty_log == "before_touch" else None)
            if s.then_access:
                touch(s.then_access)
                phase("touch_then")

            if s.dirty_log in ("after_mapping", "after_mapping_then_disable"):
                g.vm.set_dirty_logging(WINDOW_SLOT, True)
                phase("dirty_log_on")
                touch("write")
                phase("write_logged", _popcount(g.vm.get_dirty_log(WINDOW_SLOT)))
                if s.manual_protect:
                    g.vm.clear_dirty_log(WINDOW_SLOT)
                    phase("clear_dirty_log")
                    touch("write")
                    phase("write_after_clear", _popcount(g.vm.get_dirty_log(WINDOW_SLOT)))
                if s.dirty_log == "after_mapping_then_disable":
                    g.vm.set_dirty_logging(WINDOW_SLOT, False)
                    phase("dirty_log_off")
                    touch()
                    phase("touch_again")

            if s.thp_split:
                frames = s.split_frames or tuple(range(len(mem.huge_frames())))
                mem.split_thp_frames(frames, s.thp_split)
                phase(f"thp_split_{s.thp_split}")
                touch()
                phase("touch_again")
            if s.slot_op == "delete":
                ms = g.vm.delete_memslot(WINDOW_SLOT)
                phase("slot_delete")
                g.vm.add_memslot(WINDOW_SLOT, ms.gpa, mem, flags=ms.flags, own=False)
                phase("slot_create")
                touch()
                phase("touch_again")
            elif s.slot_op == "move":
                gpa = s.gpa + SLOT_MOVE_DELTA
                g.vm.move_memslot(WINDOW_SLOT, gpa)
                g.map_window(gpa, s.slot_size, s.guest_page_size)
                phase("slot_move")
                touch()
                phase("touch_again")
            if s.nx_recovery_wait:
                # the worker zaps DIV_ROUND_UP(nx_lpage_splits, ratio) pages each period:
                # ratio 1 recovers every tracked page at its next run
                old = {k: write_module_param(k, v) for k, v in NX_RECOVERY_PARAMS}
                try:
                    time.sleep(s.nx_recovery_wait)
                finally:
                    for k, v in old.items():
                        write_module_param(k, v)
                phase("nx_recovery")
                touch("read")           # reads may map huge again
                phase("touch_again")

            stat_deltas = _diff(g.stats(), base)
            return tuple(phases), stat_deltas, nat
        finally:
            # the VM must drop its memslot before the memory goes away
            g.vm.close()
            mem.close()


def _run_step(g: TouchGuest, gmem: GuestMemfd | None, s: HostScenario, st: tuple,
              touch: Callable[[str | None], None]) -> None:
    """One :data:`STEP_VERBS` step on the host."""
    verb = st[0]
    if verb == "touch":
        touch(st[1] if len(st) > 1 else None)
    elif verb in ("private", "shared"):
        g.vm.set_memory_attributes(s.gpa + st[1], st[2], u.KVM_MEMORY_ATTRIBUTE_PRIVATE
                                   if verb == "private" else 0)
    elif verb == "punch":
        gmem.punch_hole(st[1], st[2])
    else:
        g.vcpu.pre_fault_memory(s.gpa + st[1], st[2])


def run_host_scenario(s: HostScenario, *, repeats: int = 2, kvm_path: str = DEFAULT_KVM_PATH,
                      native: bool = True, facts: dict | None = None,
                      marker: Marker = _no_marker) -> HostResult:
    """Run *s* ``repeats`` times in fresh VMs; the first run is reported, the others
    are compared with it (``repeatable``/``repeat_mismatches``).  *marker* is told the
    phase boundaries of the first run.

    Raises :class:`~tdpsim.kvmcheck.vm.KvmUnavailable` when /dev/kvm cannot be used and
    :class:`~tdpsim.kvmcheck.vm.KvmError` / ``GuestError`` on unexpected failures.
    A scenario whose prerequisites are missing (hugetlb pool) is returned with
    ``skipped`` set instead.
    """
    facts = facts if facts is not None else host_facts()
    common = dict(kvm_params=facts["kvm_params"], vendor_modules=facts["vendor_modules"],
                  kernel_release=facts["kernel_release"])
    reason = _skip_reason(s, kvm_path)
    if reason:
        return HostResult(s, skipped=reason, **common)
    phases, deltas, nat = _run_once(s, kvm_path, native, marker)
    mismatches: list[str] = []
    for i in range(1, repeats):
        p2, _, nat2 = _run_once(s, kvm_path, native)
        sig1 = [p.signature() for p in phases]
        sig2 = [p.signature() for p in p2]
        if sig1 != sig2:
            for a, b in zip(sig1, sig2):
                if a != b:
                    mismatches.append(f"run {i + 1} phase {a[0]}: {b[1:]} != {a[1:]}")
            if len(sig1) != len(sig2):
                mismatches.append(f"run {i + 1}: {len(sig2)} phases != {len(sig1)}")
        if nat2.took_effect != nat.took_effect:
            mismatches.append(f"run {i + 1}: native took_effect={nat2.took_effect}")
    return HostResult(s, phases=phases, stat_deltas=deltas, native=nat, repeats=repeats,
                      repeatable=(not mismatches) if repeats > 1 else None,
                      repeat_mismatches=tuple(mismatches), **common)


def run_host_matrix(matrix: Iterable[HostScenario] = DEFAULT_MATRIX, *, repeats: int = 2,
                    kvm_path: str = DEFAULT_KVM_PATH, native: bool = True) -> list[HostResult]:
    """:func:`run_host_scenario` for every row (host facts read once)."""
    facts = host_facts()
    return [run_host_scenario(s, repeats=repeats, kvm_path=kvm_path, native=native, facts=facts)
            for s in matrix]
