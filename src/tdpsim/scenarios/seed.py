"""The seed patch review's scenario, run side by side on a direct root and on a TD's
mirror root under each ``mirror_promotion`` policy.

The review (shared/seed/): after part of a 2 MB private range is converted private →
shared → private, a later fault that may map 2M finds a page table where it wants a huge
leaf.  A direct root promotes (the table is replaced by a 2M leaf).  On a mirror root:

* ``mirror-patched`` — the SEED patch: ``disallowed_hugepage_adjust`` lowers the goal to 4K
  and no SEAMCALL fails;
* ``mirror-unpatched`` — HP-v3 without it: ``set_external_spte_present`` hits KVM_BUG_ON
  (table → huge leaf is no valid transition), runs no TDX hook and writes the 2M SPTE
  anyway; ``handle_removed_pt`` then tears the 4K table down under the *shared* lock
  (KVM_BUG_ON per child, lockdep splat), handing all 512 children — the non-present one
  too — to ``tdx_sept_remove_private_spte`` (BLOCK/TRACK/REMOVE/WBINVD; BLOCK of the
  converted page fails), and ``free_external_spt`` refuses while the HKID is assigned
  (WARN, page leaked).  The mirror ends with a 2M leaf, the S-EPT with a 2M table;
* ``mirror-seamcall`` — a KVM that would promote: RANGE.BLOCK, TRACK, PAGE.PROMOTE, which
  the module refuses because the 512 children are not uniformly PENDING or MAPPED.

The TD runs on the real TDX glue and module emulator (``model.tdx``).  The guest is a
non-Linux one (#VE enabled) that *touches* the re-converted page before accepting it: a
Linux guest accepts first, its 4K ACCEPT sets GUEST_INHIBIT on the frame and no later fault
asks for 2M at all (``tests/model/test_seed_tdx.py`` shows both).

The direct root's "same" sequence on a plain VM: a plain VM has no private memory, so its
4K phase comes from the host — a THP split (mmu_notifier zap) makes the frame 4K-only,
khugepaged's collapse invalidates it again, and the next fault promotes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.dump import LEVEL_NAMES, DumpRow, walk_root
from ..model.kvm import Kvm
from ..model.kvm_main import kvm_mmu_notifier_invalidate_range
from ..model.mmu_fault import ept_violation_error_code, kvm_mmu_page_fault
from ..model.mmu_internal import ERRNO_NAMES, RET_PF_NAMES
from ..model.policy import Policy
from ..model.profile import DEFAULT_PROFILE, KernelProfile
from ..model.spte import PAGE_SHIFT
from ..model.tdx import TdGuest, create_td
from ..model.tdx_module.sept import STATE_NAMES
from ..model.vmm import VmConfig, create_vm

VARIANTS = ("direct", "mirror-patched", "mirror-unpatched", "mirror-seamcall")
POLICY_OF = {"mirror-patched": "disallowed", "mirror-unpatched": "unpatched",
             "mirror-seamcall": "seamcall"}
M2 = 2 << 20
BASE = M2                       # the 2 MB range (gpa) the guest accepts and converts in
X = BASE + 5 * 4096             # the 4K page converted private → shared → private
FRAME_GFN = BASE >> PAGE_SHIFT
X_GFN = X >> PAGE_SHIFT


@dataclass
class SeedOutcome:
    """What one variant did: the steps, the final fault's effect, stats, SEAMCALLs, bugs."""

    variant: str
    root: str
    policy: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    final_level: str = ""
    pages: tuple[int, int, int] = (0, 0, 0)
    tdp_mmu_pages: int = 0
    tlb_flush_requests: int = 0
    vm_bugged: bool = False
    bugs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sept_entry: str = "—"
    final_seamcalls: list[str] = field(default_factory=list)
    failed_seamcalls: list[str] = field(default_factory=list)
    dump: list[DumpRow] = field(default_factory=list)


def _short(leaf: str) -> str:
    """TDH.MEM.PAGE.AUG → AUG, TDH.MEM.SEPT.ADD → SEPT.ADD, TDH.VP.ENTER → ENTER."""
    parts = leaf.split(".")
    return ".".join(parts[-2:]) if parts[-1] == "ADD" else parts[-1]


def _result_name(r: int) -> str:
    return RET_PF_NAMES.get(r) or f"-{ERRNO_NAMES.get(-r, -r)}"


def _leaf_level(kvm: Kvm, root, gfn: int) -> str:
    rows = [r for r in walk_root(kvm, root, gfn, gfn + 1) if r.decoded.startswith("leaf")]
    return {1: "4K", 2: "2M", 3: "1G"}[rows[-1].level] if rows else "none"


def _finish(out: SeedOutcome, kvm: Kvm, root) -> SeedOutcome:
    out.final_level = _leaf_level(kvm, root, X_GFN)
    out.pages = tuple(kvm.stat.pages)
    out.tdp_mmu_pages = kvm.tdp_mmu_pages
    out.tlb_flush_requests = kvm.stat.remote_tlb_flush_requests
    out.vm_bugged = kvm.vm_bugged
    out.bugs = [f"KVM_BUG_ON in {b.function}: {b.message}" for b in kvm.bugs]
    out.warnings = [f"WARN in {w.function}: {w.message}" for w in kvm.warnings]
    out.dump = list(walk_root(kvm, root, FRAME_GFN, X_GFN + 2, max_rows=16))
    return out


def run_direct(profile: KernelProfile = DEFAULT_PROFILE) -> SeedOutcome:
    """The plain-VM analogue: host THP split → 4K faults → collapse → a fault promotes."""
    out = SeedOutcome("direct", "direct", "—")
    kvm = create_vm(VmConfig(tdx=False, mem_bytes=16 << 20, profile=profile))
    slot = kvm.memslots[0]
    frame = slot.gfn_to_hva(FRAME_GFN) >> 21
    end = FRAME_GFN + 512
    err = ept_violation_error_code(write=True)
    slot.backing.split_frames.add(frame)
    kvm_mmu_notifier_invalidate_range(kvm, FRAME_GFN, end)
    out.steps.append(("host splits the THP (mmu_notifier zap)", "frame is 4K-only"))
    for gfn in (FRAME_GFN, FRAME_GFN + 1, FRAME_GFN + 2):
        r = kvm_mmu_page_fault(kvm.vcpus[0], gfn << PAGE_SHIFT, err)
        out.steps.append((f"fault gfn {gfn:#x}", _result_name(r)))
    slot.backing.split_frames.discard(frame)
    kvm_mmu_notifier_invalidate_range(kvm, FRAME_GFN, end)
    out.steps.append(("khugepaged collapses the THP (mmu_notifier zap)", "4K leaves gone, table stays"))
    r = kvm_mmu_page_fault(kvm.vcpus[0], X, err)
    out.steps.append((f"fault gfn {X_GFN:#x}, 2M allowed", _result_name(r)))
    return _finish(out, kvm, kvm.vcpus[0].root)


def run_mirror(variant: str, profile: KernelProfile = DEFAULT_PROFILE) -> SeedOutcome:
    """The TD: accept 2M at 2M, convert 4K to shared and back, then touch it (goal 2M)."""
    policy = POLICY_OF[variant]
    out = SeedOutcome(variant, "mirror", policy)
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=16 << 20, nr_vcpus=2, profile=profile),
                         Policy(mirror_promotion=policy), sept_ve_disable=False)
    tdx.tdx_td_finalize(kvm)
    guest = TdGuest(kvm, tdx)
    steps = (
        ("guest accepts 2 MB at 2M", lambda: guest.accept_memory(BASE, BASE + M2)),
        (f"MapGPA {X:#x} → shared (4K)", lambda: guest.set_memory_decrypted(X, 4096)),
        (f"MapGPA {X:#x} → private", lambda: guest.map_gpa(X, 4096, shared=False) == 0),
    )
    for label, step in steps:
        n = len(tdx.log)
        ok = step()
        out.steps.append((label, ("ok " if ok else "FAILED ") + " ".join(tdx.leaf_sequence(n))))
    n = len(tdx.log)
    access = guest.touch(X, accept_on_ve=True)
    out.final_seamcalls = [_short(r.leaf) + (f"@{'4K' if r.level == 1 else '2M'}" if r.level else "")
                           for r in tdx.log[n:]]
    out.failed_seamcalls = [f"{_short(r.leaf)} → {r.name}" for r in tdx.log[n:] if r.status]
    out.steps.append((f"guest touches {X:#x} (goal 2M)",
                      "#VE, accepted" if access.ve else ("VM dead" if kvm.vm_dead else "ok")))
    out.sept_entry = _sept_entry(tdx, X)
    return _finish(out, kvm, kvm.vcpus[0].mirror_root)


def _sept_entry(tdx, gpa: int) -> str:
    """The TDX module's S-EPT for ``gpa``: the 2M entry's state / the entry where the 4K
    walk stops (compare with the mirror's leaf level)."""
    entry_2m = tdx.module.entry(gpa, 1)
    info = tdx.module.lookup(gpa)
    head = f"2M {STATE_NAMES[entry_2m[0]]} / " if entry_2m is not None else ""
    return head + f"{LEVEL_NAMES[info.level + 1]} {STATE_NAMES[info.state]}"


def run_length(seq: list[str], max_period: int = 6) -> list[str]:
    """Fold repeats of a short run of SEAMCALLs: ``(A B)×3`` for A B A B A B."""
    out: list[str] = []
    i = 0
    while i < len(seq):
        best_period, best_reps = 1, 1
        for period in range(1, max_period + 1):
            reps = 1
            while seq[i:i + period] == seq[i + reps * period:i + (reps + 1) * period]:
                reps += 1
            if reps > 1 and reps * period > best_reps * best_period:
                best_period, best_reps = period, reps
        run = seq[i:i + best_period]
        if best_reps > 2:
            out.append(("(" + " ".join(run) + ")" if best_period > 1 else run[0])
                       + f"×{best_reps}")
            i += best_period * best_reps
        else:
            out.append(seq[i])
            i += 1
    return out


def run_seed_variant(variant: str, profile: KernelProfile = DEFAULT_PROFILE) -> SeedOutcome:
    if variant not in VARIANTS:
        raise ValueError(f"unknown seed variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return run_direct(profile) if variant == "direct" else run_mirror(variant, profile)


def run_seed(profile: KernelProfile = DEFAULT_PROFILE) -> list[SeedOutcome]:
    """All variants, in a fixed order; a kernel without TDX has only the direct one."""
    variants = VARIANTS if profile.tdx_vm_type else ("direct",)
    return [run_seed_variant(v, profile) for v in variants]
