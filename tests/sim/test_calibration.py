"""td-boot against the published figures (reference kvm-tdp-mmu.md §5.6, tdx-module.md §8).

Calibrated (within ±10%): 4K accepts where 2M was possible (≈2710, all on vCPU 0, same at
8 GB), 2M mappings from kernel boot to login (≈1144), accept-level write mmu_lock
acquisitions with the GUEST_INHIBIT pre-check (≈11).  The 17626 figure without the
pre-check is NOT reproduced by the modelled accept-level handling (see docs/workloads.md);
the test pins what the model says instead and the EPT-violation count it does match.
"""

import pytest

from tdpsim.sim import builtin_workload, simulate


def within(value, published, tol=0.10):
    return abs(value - published) <= tol * published


@pytest.fixture(scope="module")
def boot4():
    return simulate(builtin_workload("td-boot"), "upstream")


def test_4k_accepts_where_2m_possible(boot4):
    assert within(boot4.totals["accept.4k_where_2m_possible"], 2710)


def test_4k_accepts_all_on_vcpu0(boot4):
    # Only the firmware and EFI-stub phases (vCPU 0 only) make 4K accepts in 2M frames.
    for p in boot4.phases:
        if p.counters.get("accept.4k_where_2m_possible"):
            assert p.name in ("firmware", "efi-stub")


def test_2m_mappings_boot_to_login(boot4):
    kernel = sum(p.counters.get("mappings_2m", 0) for p in boot4.phases
                 if p.name not in ("td-build", "firmware"))
    assert within(kernel, 1144)


def test_write_locks_with_precheck(boot4):
    assert within(boot4.totals["tdx.accept_level_write_locks"], 11)


def test_4k_accepts_do_not_grow_with_memory(boot4):
    r8 = simulate(builtin_workload("td-boot").with_vm(memory_gib=8), "upstream")
    assert r8.totals["accept.4k_where_2m_possible"] == \
        boot4.totals["accept.4k_where_2m_possible"]


def test_without_precheck_every_accept_exit_takes_the_write_lock(boot4):
    r = simulate(builtin_workload("td-boot"), "no-lpage-check-first")
    t = r.totals
    assert t["tdx.accept_level_write_locks"] == t["accept.4k_exits"] + t["accept.2m_exits"]
    # EPT violations from the EFI stub to login match the published 17626 within 10%.
    kernel_exits = sum(p.counters.get("ept_violations", 0) for p in r.phases
                       if p.name not in ("td-build", "firmware"))
    assert within(kernel_exits, 17626)
