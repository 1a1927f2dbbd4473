"""td-boot against the published figures of the TDX huge-page series (Yan Zhao, 2025; 4 GB
TD, 8 vCPUs), counted the way they were measured (docs/workloads.md):

* ≈2710 "4K accepts where KVM could map 2M": per 4K ACCEPT exit, RFC v1 (no inhibit), all
  on vCPU 0, not growing with guest memory (<aFvBNromdrkEtPp6@…>);
* ≈1144 2M mappings from kernel boot to login;
* ≈17626 / ≈11 write mmu_lock acquisitions without / with the lpage_info pre-check, under
  the draft ``tdx_check_accept_level`` (<aF0Kg8FcHVMvsqSo@…>) = presets
  ``draft-no-lpage-check-first`` / ``draft-lpage-check-first``.

All four within ±10% under the draft rule; the v3 handling on the same workload is pinned
too (it does not reproduce 11: its 2M exits lock as well).
"""

import pytest

from tdpsim.sim import builtin_workload, simulate


def within(value, published, tol=0.10):
    return abs(value - published) <= tol * published


@pytest.fixture(scope="module")
def draft():
    return simulate(builtin_workload("td-boot"), "draft-lpage-check-first")


@pytest.fixture(scope="module")
def draft_no_check():
    return simulate(builtin_workload("td-boot"), "draft-no-lpage-check-first")


def test_4k_accepts_where_2m_possible(draft):
    assert draft.ok
    assert within(draft.totals["accept.4k_where_2m_possible"], 2710)
    assert draft.totals["accept.4k_where_2m_possible"] == 2632


def test_4k_accepts_where_2m_possible_breakdown(draft):
    """Per phase, the mail's breakdown: 506 + 512 once each, the three hot pages 974, 156
    and 476 times; none during the kernel stage."""
    c = {p.name: p.counters.get("accept.4k_where_2m_possible", 0) for p in draft.phases}
    assert c["edk2-accept-4k"] == 506 + 512
    assert (c["edk2-virtio-0x7d9d7"], c["edk2-virtio-0x7d9d9"], c["edk2-virtio-0x7d9da"]) \
        == (974, 156, 476)
    assert c["edk2-virtio-data"] == 0  # re-accepts in MIXED frames: 2M impossible
    assert draft.stage_total("accept.4k_where_2m_possible", "kernel") == 0


def test_4k_accepts_all_on_vcpu0(draft):
    wl = builtin_workload("td-boot")
    for ph in wl.phases:
        rec = draft.phase(ph.name)
        if rec.counters.get("accept.4k_exits"):
            assert ph["vcpus"] == (0,), ph.name


def test_2m_mappings_boot_to_login(draft):
    assert within(draft.stage_total("mappings_2m", "kernel"), 1144)


def test_write_locks_with_precheck(draft):
    assert within(draft.totals["tdx.accept_level_write_locks"], 11)
    assert draft.totals["tdx.accept_level_write_locks"] == 11


def test_write_locks_without_precheck(draft_no_check):
    t = draft_no_check.totals
    assert within(t["tdx.accept_level_write_locks"], 17626)
    # The draft without the pre-check locks on every 4K ACCEPT exit, and only on those.
    assert t["tdx.accept_level_write_locks"] == t["accept.4k_exits"] == 17632


def test_v3_on_the_same_workload():
    """RFC v2/v3 handling: 2M ACCEPT exits lock too (first per 1 GiB region with the
    pre-check; every one without), so 11 is not reproduced: 13 and 18801."""
    up = simulate(builtin_workload("td-boot"), "upstream").totals
    rfc = simulate(builtin_workload("td-boot"), "no-lpage-check-first").totals
    assert up["tdx.accept_level_write_locks"] == 13
    assert rfc["tdx.accept_level_write_locks"] == rfc["accept.4k_exits"] + rfc["accept.2m_exits"] \
        == 18801


def test_4k_accepts_do_not_grow_with_memory(draft):
    r8 = simulate(builtin_workload("td-boot").with_vm(memory_gib=8), "draft-lpage-check-first")
    for k in ("accept.4k_where_2m_possible", "accept.4k_exits", "tdx.accept_level_write_locks"):
        assert r8.totals[k] == draft.totals[k], k
    assert r8.stage_total("mappings_2m", "kernel") == 1144
