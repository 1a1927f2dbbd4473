"""Policies as data: every switch the seed review and the TDX huge-page series argue about.

Not a kernel file: these are the module parameters, config choices and patch sets
(reference §0.1: UPSTREAM, HP-v3, SEED) that decide the model's behaviour, gathered in one
frozen value so that runs are reproducible and comparable side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from .spte import PG_LEVEL_1G, PG_LEVEL_2M, PG_LEVEL_4K

MirrorPromotion = Literal["disallowed", "rfc-v1", "v3-posted", "unpatched", "seamcall"]
MIRROR_PROMOTION_CHOICES = ("disallowed", "rfc-v1", "v3-posted", "unpatched", "seamcall")
AcceptLevelHandling = Literal["v3", "draft-2025-06"]
ACCEPT_LEVEL_HANDLING_CHOICES = ("v3", "draft-2025-06")


@dataclass(frozen=True)
class Policy:
    """The switches of one run.

    mirror_promotion: which form of "KVM: x86/mmu: Disallow page merging (huge page
        adjustment) for mirror root" runs (every variant posted in the thread; the code as
        posted is quoted in ``mmu.disallowed_hugepage_adjust`` and
        ``tdp_mmu.hugepage_adjust_disallowed``).
        ``disallowed`` — the SEED, Sean Christopherson's rewrite
        <aXeRf4Jw6-Sl1JCe@google.com> (2026-01-26): ``is_mirror_sp(root)`` joins the NX
        workaround at the ``kvm_tdp_mmu_map`` call site and ``disallowed_hugepage_adjust``
        also refuses when ``is_mirror_sp(spte_to_child_sp(spte))`` (default).
        ``rfc-v1`` — RFC v1 10/21 <20250424030634.369-1-yan.y.zhao@intel.com> (2025-04-24):
        ``is_mirror = is_mirror_sp(root)`` computed once and passed into
        ``disallowed_hugepage_adjust(..., is_mirror)``.
        ``v3-posted`` — RFC v2 07/23 <20250807094254.4537-1-yan.y.zhao@intel.com>
        (2025-08-07) and v3 06/24 <20260106102024.25023-1-yan.y.zhao@intel.com>
        (2026-01-06), the same code: ``kvm_has_mirrored_tdp(kvm)`` at the call site (so
        every fault of a TD, direct root too, walks through the adjust), the child's
        ``is_mirror_sp`` inside.
        ``unpatched`` — HP-v3 without the patch: a 2M goal over a mirror page table
        reaches ``set_external_spte_present`` with a present old SPTE and hits its
        KVM_BUG_ON.
        ``seamcall`` — a hypothetical future KVM that promotes S-EPT with RANGE.BLOCK,
        TRACK and PAGE.PROMOTE under the write lock (filled in by the TDX glue).
    nx_huge_pages: the ``kvm.nx_huge_pages`` module parameter (iTLB multihit workaround).
    tdx_huge_page: HP-v3's ``kvm_intel.tdx_huge_page``; off means private memory is 4K only
        (UPSTREAM behaviour).
    tdx_private_max_level: the most ``tdx_gmem_max_mapping_level`` allows once RUNNABLE
        (HP-v3: 2M; never 1G).
    max_huge_page_level: 1G if EPT supports 1G pages, else 2M.
    eager_page_split: the ``kvm.eager_page_split`` module parameter.
    accept_level_handling: which form of the accept-level handling runs in
        ``tdx_honor_guest_accept_level``.
        ``v3`` — RFC v2/v3 (default): 4K *and* 2M ACCEPT exits split the accept-aligned
        range under the write lock and set GUEST_INHIBIT at level+1 (and level+2 for 4K).
        ``draft-2025-06`` — Yan Zhao's draft ``tdx_check_accept_level`` from
        <aF0Kg8FcHVMvsqSo@yzhao56-desk.sh.intel.com> (2025-06-26), the code the published
        17626/11 write-lock counts were measured on: only 4K ACCEPT exits take the write
        lock, split ``[gfn, gfn + 1)`` and set GUEST_INHIBIT at 2M only.
    lpage_check_first: the accept-level handling tests GUEST_INHIBIT (lpage_info) without
        the lock and skips the write mmu_lock when it is set (the 17626 → 11 figure).
    gmem_hva_fixup: HP-v3's fixup that ignores the hva alignment of guest_memfd slots.
    ad_enabled: ``kvm_ad_enabled``: hardware A/D bits in use.
    enable_pml: ``kvm_intel.enable_pml`` (``kvm_x86_ops.cpu_dirty_log_size`` non-zero):
        dirty logging clears D bits on 4K leaves and lets the CPU log writes, instead of
        write-protecting them.  Off by default (the model's baseline host).
    nx_huge_pages_recovery_ratio: ``kvm.nx_huge_pages_recovery_ratio`` (0 disables
        recovery); each run zaps ``DIV_ROUND_UP(tracked, ratio)`` pages.
    nx_huge_pages_recovery_period_ms: ``kvm.nx_huge_pages_recovery_period_ms``; 0 means
        derived from the ratio (``calc_nx_huge_pages_recovery_period``).
    resched_every: how often ``need_resched()`` is true for a walker that may yield
        (``tdp_mmu_iter_cond_resched``): every N-th check once the walk made progress.
        0 = never (an idle host), so sequential runs do not yield.
    """

    mirror_promotion: MirrorPromotion = "disallowed"
    nx_huge_pages: bool = False
    tdx_huge_page: bool = True
    tdx_private_max_level: int = PG_LEVEL_2M
    max_huge_page_level: int = PG_LEVEL_1G
    eager_page_split: bool = True
    accept_level_handling: AcceptLevelHandling = "v3"
    lpage_check_first: bool = True
    gmem_hva_fixup: bool = True
    ad_enabled: bool = True
    enable_pml: bool = False
    nx_huge_pages_recovery_ratio: int = 60
    nx_huge_pages_recovery_period_ms: int = 0
    resched_every: int = 0

    def __post_init__(self) -> None:
        if self.mirror_promotion not in MIRROR_PROMOTION_CHOICES:
            raise ValueError(f"mirror_promotion must be one of {MIRROR_PROMOTION_CHOICES}, "
                             f"not {self.mirror_promotion!r}")
        if self.accept_level_handling not in ACCEPT_LEVEL_HANDLING_CHOICES:
            raise ValueError(f"accept_level_handling must be one of "
                             f"{ACCEPT_LEVEL_HANDLING_CHOICES}, not {self.accept_level_handling!r}")
        for name in ("tdx_private_max_level", "max_huge_page_level"):
            if getattr(self, name) not in (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G):
                raise ValueError(f"{name} must be 1 (4K), 2 (2M) or 3 (1G)")
        for name in ("nx_huge_pages_recovery_ratio", "nx_huge_pages_recovery_period_ms",
                     "resched_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer")

    def with_(self, **changes: object) -> "Policy":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
