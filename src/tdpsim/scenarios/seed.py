"""The seed patch review's scenario, run three ways side by side.

The review (shared/seed/): after part of a 2 MB private range is converted private →
shared → private, a later fault that may map 2M finds a page table where it wants a huge
leaf.  On a direct root KVM promotes (replaces the table by a 2M leaf).  On a mirror root
the TDX module could not follow, so:

* ``mirror-patched`` — the SEED patch: ``disallowed_hugepage_adjust`` lowers the goal to 4K;
* ``mirror-unpatched`` — HP-v3 without it: ``set_external_spte_present`` hits KVM_BUG_ON;
* ``direct`` — the same guest-visible sequence on a plain VM.  A plain VM has no private
  memory, so its 4K phase comes from the host: a THP split (mmu_notifier zap) makes the
  frame 4K-only, khugepaged's collapse invalidates it again, and the next fault promotes.

The TDX side is ``RecordingExternalOps`` by default (every hook accepted and recorded) or
any ``KvmX86Ops`` factory, e.g. the TDX glue, passed by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..model.dump import DumpRow, walk_root
from ..model.kvm import Kvm, KvmX86Ops, RecordingExternalOps
from ..model.kvm_main import kvm_mmu_notifier_invalidate_range, kvm_vm_set_mem_attributes
from ..model.memslot import KVM_MEMORY_ATTRIBUTE_PRIVATE
from ..model.mmu_fault import ept_violation_error_code, kvm_mmu_do_page_fault
from ..model.mmu_internal import ERRNO_NAMES, RET_PF_NAMES
from ..model.policy import Policy
from ..model.spte import PAGE_SHIFT, PG_LEVEL_2M
from ..model.vmm import VmConfig, create_vm

VARIANTS = ("direct", "mirror-patched", "mirror-unpatched")
FRAME_GFN = 0x400  # a 2 MB-aligned frame inside the guest's RAM
CONVERTED_GFN = FRAME_GFN + 1
FOUR_K_GFNS = (FRAME_GFN, FRAME_GFN + 2, FRAME_GFN + 3)


@dataclass
class SeedOutcome:
    """What one variant did: the final fault, the stats, the TDX-side calls, bugs."""

    variant: str
    root: str
    policy: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    final_result: str = ""
    final_level: str = ""
    pages: tuple[int, int, int] = (0, 0, 0)
    tdp_mmu_pages: int = 0
    tlb_flush_requests: int = 0
    vm_bugged: bool = False
    bugs: list[str] = field(default_factory=list)
    external_calls: list[str] = field(default_factory=list)
    dump: list[DumpRow] = field(default_factory=list)


def _result_name(r: int) -> str:
    return RET_PF_NAMES.get(r) or f"-{ERRNO_NAMES.get(-r, -r)}"


def _fault(kvm: Kvm, gfn: int, private: bool) -> int:
    gpa = gfn << PAGE_SHIFT
    if not private and kvm.kvm_has_mirrored_tdp():
        gpa |= kvm.gfn_direct_bits << PAGE_SHIFT
    err = ept_violation_error_code(write=True, private=private)
    return kvm_mmu_do_page_fault(kvm.vcpus[0], gpa, err)


def _leaf_level(kvm: Kvm, root, gfn: int) -> str:
    rows = [r for r in walk_root(kvm, root, gfn, gfn + 1) if "leaf" in r.decoded]
    return {1: "4K", 2: "2M", 3: "1G"}[rows[-1].level] if rows else "none"


def _run_direct(out: SeedOutcome) -> Kvm:
    kvm = create_vm(VmConfig(tdx=False))
    slot = kvm.memslots[0]
    frame = slot.gfn_to_hva(FRAME_GFN) >> 21
    frame_end = FRAME_GFN + (1 << 9)
    slot.backing.split_frames.add(frame)
    kvm_mmu_notifier_invalidate_range(kvm, FRAME_GFN, frame_end)
    out.steps.append(("host splits the THP (mmu_notifier zap)", "frame is 4K-only"))
    for gfn in FOUR_K_GFNS:
        out.steps.append((f"fault gfn {gfn:#x}", _result_name(_fault(kvm, gfn, False))))
    slot.backing.split_frames.discard(frame)
    kvm_mmu_notifier_invalidate_range(kvm, FRAME_GFN, frame_end)
    out.steps.append(("khugepaged collapses the THP (mmu_notifier zap)", "4K leaves zapped; table stays"))
    return kvm


def _run_mirror(out: SeedOutcome, policy: Policy, ops: KvmX86Ops) -> Kvm:
    kvm = create_vm(VmConfig(tdx=True), policy, x86_ops=ops)
    out.steps.append((f"fault gfn {FRAME_GFN:#x} (private)", _result_name(_fault(kvm, FRAME_GFN, True))))
    kvm_vm_set_mem_attributes(kvm, CONVERTED_GFN, CONVERTED_GFN + 1, 0)
    out.steps.append((f"convert gfn {CONVERTED_GFN:#x} private → shared", "2M leaf split, 4K removed"))
    kvm_vm_set_mem_attributes(kvm, CONVERTED_GFN, CONVERTED_GFN + 1, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    out.steps.append((f"convert gfn {CONVERTED_GFN:#x} shared → private", "frame no longer mixed"))
    return kvm


def run_seed_variant(variant: str,
                     ops_factory: Optional[Callable[[], KvmX86Ops]] = None) -> SeedOutcome:
    """Run one variant of the seed scenario and report what the model did."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown seed variant {variant!r}; choose from {', '.join(VARIANTS)}")
    policy = Policy(mirror_promotion="unpatched" if variant == "mirror-unpatched" else "disallowed")
    out = SeedOutcome(variant, "direct" if variant == "direct" else "mirror",
                      policy.mirror_promotion)
    if variant == "direct":
        kvm = _run_direct(out)
        root = kvm.vcpus[0].root
    else:
        ops = ops_factory() if ops_factory else RecordingExternalOps(private_max_level=PG_LEVEL_2M)
        kvm = _run_mirror(out, policy, ops)
        root = kvm.vcpus[0].mirror_root
    calls_before = len(getattr(kvm.x86_ops, "calls", []))
    r = _fault(kvm, CONVERTED_GFN, variant != "direct")
    out.steps.append((f"fault gfn {CONVERTED_GFN:#x}: 2M allowed", _result_name(r)))
    out.final_result = _result_name(r)
    out.final_level = _leaf_level(kvm, root, CONVERTED_GFN)
    out.pages = tuple(kvm.stat.pages)
    out.tdp_mmu_pages = kvm.tdp_mmu_pages
    out.tlb_flush_requests = kvm.stat.remote_tlb_flush_requests
    out.vm_bugged = kvm.vm_bugged
    out.bugs = [f"KVM_BUG_ON in {b.function}: {b.message}" for b in kvm.bugs]
    out.external_calls = [c[0] for c in getattr(kvm.x86_ops, "calls", [])[calls_before:]]
    out.dump = list(walk_root(kvm, root, FRAME_GFN, FRAME_GFN + 8, max_rows=16))
    return out


def run_seed(ops_factory: Optional[Callable[[], KvmX86Ops]] = None) -> list[SeedOutcome]:
    """All three variants, in a fixed order."""
    return [run_seed_variant(v, ops_factory) for v in VARIANTS]
