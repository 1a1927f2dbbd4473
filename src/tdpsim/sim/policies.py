"""Named policy presets: the variants KVM/TDX developers compare.

Not a kernel file.  A preset is a *partial* set of ``Policy`` switches laid over the
workload's base policy (its ``[policy]`` table over ``Policy()`` defaults), so a workload
can say "this guest runs with ``nx_huge_pages`` on" and the ``nx-off`` preset can still
turn it off.  ``resolve_policy`` is the only place the layering happens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from tdpsim.model.policy import Policy


class PolicyError(ValueError):
    """An unknown preset or switch."""


@dataclass(frozen=True)
class Preset:
    """One named variant: what it models, the switches it sets, where it was posted
    (Message-IDs on kvm@vger.kernel.org) and the names it had before."""

    name: str
    summary: str
    switches: Mapping[str, Any]
    posted: str = ""
    aliases: tuple[str, ...] = ()


_SEED_TRIAL = "HP-v3 (TDX huge pages v3) with "
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("hp3-seed", _SEED_TRIAL + "the seed patch as Sean Christopherson rewrote it: "
           "is_mirror_sp(root) at the kvm_tdp_mmu_map call site — no promotion on mirror "
           "roots", {"mirror_promotion": "disallowed", "tdx_huge_page": True,
                     "accept_level_handling": "v3", "lpage_check_first": True},
           posted="<aXeRf4Jw6-Sl1JCe@google.com> 2026-01-26", aliases=("upstream",)),
    Preset("hp3-rfc-v1", _SEED_TRIAL + "RFC v1 10/21 of the patch: is_mirror passed into "
           "disallowed_hugepage_adjust", {"mirror_promotion": "rfc-v1", "tdx_huge_page": True},
           posted="<20250424030634.369-1-yan.y.zhao@intel.com> 2025-04-24"),
    Preset("hp3-v3-posted", _SEED_TRIAL + "RFC v2 07/23 = v3 06/24 as posted: "
           "kvm_has_mirrored_tdp(kvm) at the call site, is_mirror_sp(child) inside",
           {"mirror_promotion": "v3-posted", "tdx_huge_page": True},
           posted="<20250807094254.4537-1-yan.y.zhao@intel.com> 2025-08-07, "
                  "<20260106102024.25023-1-yan.y.zhao@intel.com> 2026-01-06"),
    Preset("hp3-no-patch", _SEED_TRIAL + "no patch: a 2M goal over a mirror page table "
           "reaches set_external_spte_present's KVM_BUG_ON",
           {"mirror_promotion": "unpatched", "tdx_huge_page": True}, aliases=("unpatched",)),
    Preset("hp3-promoting", _SEED_TRIAL + "a hypothetical KVM promoting S-EPT with "
           "BLOCK/TRACK/PROMOTE under the write lock",
           {"mirror_promotion": "seamcall", "tdx_huge_page": True},
           aliases=("promote-seamcall",)),
    Preset("upstream-4k", "what upstream (v6.18/6.19) does: private memory 4K only "
           "(kvm_intel.tdx_huge_page=N), max_huge_page_level 4K",
           {"tdx_huge_page": False, "max_huge_page_level": 1}, aliases=("no-huge",)),
    Preset("nx-off", "kvm.nx_huge_pages=N (no iTLB-multihit workaround)",
           {"nx_huge_pages": False}),
    Preset("lpage-check-first", "HP-v3 accept-level handling tests GUEST_INHIBIT before "
           "taking the write mmu_lock", {"lpage_check_first": True}),
    Preset("no-lpage-check-first", "the RFC form: every ACCEPT exit takes the write mmu_lock",
           {"lpage_check_first": False}),
    Preset("draft-lpage-check-first", "Yan Zhao's 2025-06 draft tdx_check_accept_level: "
           "4K ACCEPT exits only, inhibit at 2M, GUEST_INHIBIT tested before the write lock",
           {"accept_level_handling": "draft-2025-06", "lpage_check_first": True},
           posted="<aF0Kg8FcHVMvsqSo@yzhao56-desk.sh.intel.com> 2025-06-26"),
    Preset("draft-no-lpage-check-first", "the same draft without the pre-check: every 4K "
           "ACCEPT exit in a memslot takes the write mmu_lock",
           {"accept_level_handling": "draft-2025-06", "lpage_check_first": False},
           posted="<aF0Kg8FcHVMvsqSo@yzhao56-desk.sh.intel.com> 2025-06-26"),
)}
# Old names keep working: a run under an alias reports the name it was asked for.
ALIASES: dict[str, str] = {a: p.name for p in PRESETS.values() for a in p.aliases}
# The variants of the seed patch's thread, in the order they were posted.
SEED_VARIANTS = ("hp3-rfc-v1", "hp3-v3-posted", "hp3-seed", "hp3-no-patch", "hp3-promoting")

DEFAULT_PRESET = "hp3-seed"
POLICY_FIELDS = tuple(f.name for f in fields(Policy))


def is_preset(name: str) -> bool:
    return name in PRESETS or name in ALIASES


def canonical_preset(name: str) -> str:
    """The preset's current name (aliases resolved); unknown names raise PolicyError."""
    if name in PRESETS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise PolicyError(f"unknown policy preset {name!r}; known: {', '.join(PRESETS)}")


def policy_from_switches(switches: Mapping[str, Any], base: Policy | None = None) -> Policy:
    """``base`` (default ``Policy()``) with ``switches`` applied; unknown names and bad
    values raise ``PolicyError`` naming the switch."""
    base = base or Policy()
    unknown = sorted(set(switches) - set(POLICY_FIELDS))
    if unknown:
        raise PolicyError(f"unknown policy switch {unknown[0]!r}; "
                          f"known: {', '.join(POLICY_FIELDS)}")
    try:
        return base.with_(**dict(switches))
    except (TypeError, ValueError) as e:
        raise PolicyError(str(e)) from None


def resolve_policy(name: str, base_switches: Mapping[str, Any] | None = None) -> Policy:
    """Preset ``name`` over the workload's base switches over ``Policy()``."""
    preset = PRESETS[canonical_preset(name)]
    base = policy_from_switches(base_switches or {})
    return policy_from_switches(preset.switches, base)
