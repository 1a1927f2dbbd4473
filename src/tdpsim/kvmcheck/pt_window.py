"""A matrix row the host matrix cannot express: a guest page table *inside* the window.

With shadow paging KVM write-protects every guest page table it shadows and, through
``account_shadowed`` → ``kvm_mmu_gfn_disallow_lpage``, forbids huge SPTEs on the 2 MiB
frame holding it.  :class:`PtWindowScenario` puts one guest PT (mapping window frame
``pt_mapped_frame`` with 4 KiB pages) into window frame ``pt_frame``; every other frame is
mapped with the guest's 2 MiB pages.  The loop reads (a write to the PT page would be
emulated and would corrupt the PTE it hits).  Expected on a shadow-paging host: the PT's
frame and the frame it maps are 4K, the rest 2M.

:func:`run_pt_window_scenario` runs it on /dev/kvm like
:func:`~tdpsim.kvmcheck.host_matrix.run_host_scenario` (one "touch" phase) and returns the
same :class:`~tdpsim.kvmcheck.host_matrix.HostResult`.  Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from .guest import PAGE_2M, PAGE_4K, PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US, IdentityPageTables
from .host_matrix import (_WARMUP_INSNS, PAGE_STATS, WINDOW_SLOT, HostResult, HostScenario,
                          Marker, NativeExecution, PageCounts, PhaseResult, _diff, _no_marker,
                          host_facts)
from .vm import DEFAULT_KVM_PATH, HostMemory, KvmSystem, TouchGuest, fill_window

__all__ = ["PtWindowScenario", "PT_WINDOW_ROW", "pt_window_pte_bytes", "link_pt_in_window",
           "run_pt_window_scenario"]


@dataclass(frozen=True)
class PtWindowScenario(HostScenario):
    """A :class:`HostScenario` whose window also holds one guest page table.

    ``pt_frame``: window 2 MiB frame holding the PT page (at its offset ``pt_offset``);
    ``pt_mapped_frame``: window frame that PT maps with 4 KiB pages.
    """

    pt_frame: int = 2
    pt_offset: int = 0
    pt_mapped_frame: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gpa_skew or self.hva_skew or self.guest_page_size != PAGE_2M:
            raise ValueError("PtWindowScenario needs an aligned window of 2 MiB guest pages")
        if self.access == "write":
            raise ValueError("the loop would write into the page table; use read or exec")
        nframes = self.slot_size // PAGE_2M
        if not (0 <= self.pt_frame < nframes and 0 <= self.pt_mapped_frame < nframes):
            raise ValueError("pt_frame and pt_mapped_frame must be whole frames of the slot")
        if self.pt_frame == self.pt_mapped_frame or self.pt_offset % PAGE_4K:
            raise ValueError("the PT must sit on its own page in another frame")

    @property
    def pt_gpa(self) -> int:
        return self.gpa + self.pt_frame * PAGE_2M + self.pt_offset

    @property
    def mapped_va(self) -> int:
        return self.gpa + self.pt_mapped_frame * PAGE_2M


#: the row added to the check matrix (16 MiB, THP, PT in frame 2 mapping frame 1)
PT_WINDOW_ROW = PtWindowScenario(
    "guest-pt-in-window", access="read", expected=PageCounts(1024, 6, 0),
    description="a guest page table in window frame 2 maps frame 1 with 4 KiB pages; "
                "shadowing it write-protects frame 2, which is then mapped 4K")


def pt_window_pte_bytes(s: PtWindowScenario, user: bool = True) -> bytes:
    """The PT page: 512 identity 4 KiB leaves for ``s.mapped_va`` (A and D preset, as
    :class:`IdentityPageTables` does)."""
    flags = PTE_P | PTE_RW | PTE_A | PTE_D | (PTE_US if user else 0)
    return b"".join(((s.mapped_va + i * PAGE_4K) | flags).to_bytes(8, "little")
                    for i in range(512))


def link_pt_in_window(pt: IdentityPageTables, va: int, pt_gpa: int) -> None:
    """Replace the 2 MiB leaf PDE of *va* by a pointer to the PT at *pt_gpa*.

    Uses IdentityPageTables' table lookup (``_table_for``), which has no public way to
    place a table outside its own area.
    """
    pd = pt._table_for(2, va)
    pt._entry_set(pd, (va >> 21) & 0x1FF, pt_gpa | pt._table_flags)


def run_pt_window_scenario(s: PtWindowScenario, *, repeats: int = 2,
                           kvm_path: str = DEFAULT_KVM_PATH, native: bool = True,
                           facts: dict | None = None, marker: Marker = _no_marker) -> HostResult:
    """Run *s* on /dev/kvm (``repeats`` fresh VMs, the first reported); raises
    :class:`~tdpsim.kvmcheck.vm.KvmUnavailable` / ``KvmError`` as ``run_host_scenario``."""
    facts = facts if facts is not None else host_facts()
    common = dict(kvm_params=facts["kvm_params"], vendor_modules=facts["vendor_modules"],
                  kernel_release=facts["kernel_release"])
    runs = [_run_once(s, kvm_path, native, marker if i == 0 else _no_marker)
            for i in range(max(1, repeats))]
    phases, deltas, nat = runs[0]
    mismatches = [f"run {i + 1}: {[p.signature() for p in r[0]]}"
                  for i, r in enumerate(runs[1:], 1)
                  if [p.signature() for p in r[0]] != [p.signature() for p in phases]]
    return HostResult(s, phases=phases, stat_deltas=deltas, native=nat, repeats=len(runs),
                      repeatable=(not mismatches) if len(runs) > 1 else None,
                      repeat_mismatches=tuple(mismatches), **common)


def _run_once(s: PtWindowScenario, kvm_path: str, native: bool, marker: Marker):
    with KvmSystem(kvm_path) as kvm, TouchGuest(kvm, s.access, native=native,
                                                max_window_span=s.slot_size) as g:
        mem = HostMemory(s.slot_size, thp=s.thp)
        try:
            fill_window(mem, s.access)
            g.add_window(WINDOW_SLOT, s.gpa, mem, guest_page_size=PAGE_2M)
            mem.write(s.pt_gpa - s.gpa, pt_window_pte_bytes(s, g.pt.user))
            link_pt_in_window(g.pt, s.mapped_va, s.pt_gpa)
            g.finalize()
            pre = g.stats()
            g.touch(s.gpa, 0)                       # warm-up, as run_host_scenario
            base = g.stats()
            marker("warmup")
            warm = _diff(base, pre)
            sptes = sum(base.get(k, 0) for k in PAGE_STATS)
            probe = g.native
            nat = NativeExecution(
                msr=probe.msr if probe else 0x4B564D10, requested=native,
                accepted=bool(probe and probe.accepted),
                readback=probe.readback if probe else None,
                listed_in_msr_index_list=bool(probe and probe.listed),
                took_effect=sptes > 0 and warm.get("insn_emulation", 0) < _WARMUP_INSNS,
                warmup_insn_emulation=warm.get("insn_emulation", 0), warmup_sptes=sptes,
                error=probe.error if probe else None)
            g.touch(s.gpa, s.touches, s.stride)
            now = g.stats()
            phase = PhaseResult("touch", PageCounts.from_stats(now, base), _diff(now, base),
                                mem.huge_frames(), None)
            marker("touch")
            return (phase,), _diff(now, base), nat
        finally:
            g.vm.close()
            mem.close()
