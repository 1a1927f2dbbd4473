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


@dataclass(frozen=True)
class Preset:
    """One named variant: what it models and the switches it sets."""

    name: str
    summary: str
    switches: Mapping[str, Any]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("upstream", "HP-v3 huge pages + the SEED patch (no promotion on mirror roots)",
           {"mirror_promotion": "disallowed", "tdx_huge_page": True,
            "accept_level_handling": "v3", "lpage_check_first": True}),
    Preset("unpatched", "HP-v3 without patch 06/SEED: a 2M goal over a mirror page table "
           "reaches KVM_BUG_ON",
           {"mirror_promotion": "unpatched", "tdx_huge_page": True}),
    Preset("promote-seamcall", "hypothetical KVM promoting S-EPT with BLOCK/TRACK/PROMOTE "
           "under the write lock",
           {"mirror_promotion": "seamcall", "tdx_huge_page": True}),
    Preset("no-huge", "UPSTREAM private memory: 4K only (kvm_intel.tdx_huge_page=N), "
           "max_huge_page_level 4K",
           {"tdx_huge_page": False, "max_huge_page_level": 1}),
    Preset("nx-off", "kvm.nx_huge_pages=N (no iTLB-multihit workaround)",
           {"nx_huge_pages": False}),
    Preset("lpage-check-first", "HP-v3 accept-level handling tests GUEST_INHIBIT before "
           "taking the write mmu_lock", {"lpage_check_first": True}),
    Preset("no-lpage-check-first", "the RFC form: every ACCEPT exit takes the write mmu_lock",
           {"lpage_check_first": False}),
    Preset("draft-lpage-check-first", "Yan Zhao's 2025-06 draft tdx_check_accept_level "
           "(<aF0Kg8FcHVMvsqSo@…>): 4K ACCEPT exits only, inhibit at 2M, GUEST_INHIBIT "
           "tested before the write lock",
           {"accept_level_handling": "draft-2025-06", "lpage_check_first": True}),
    Preset("draft-no-lpage-check-first", "the same draft without the pre-check: every 4K "
           "ACCEPT exit in a memslot takes the write mmu_lock",
           {"accept_level_handling": "draft-2025-06", "lpage_check_first": False}),
)}

DEFAULT_PRESET = "upstream"
POLICY_FIELDS = tuple(f.name for f in fields(Policy))


class PolicyError(ValueError):
    """An unknown preset or switch."""


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
    if name not in PRESETS:
        raise PolicyError(f"unknown policy preset {name!r}; known: {', '.join(PRESETS)}")
    base = policy_from_switches(base_switches or {})
    return policy_from_switches(PRESETS[name].switches, base)
