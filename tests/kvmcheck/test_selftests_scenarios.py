"""KVM selftests as model scenarios (tdpsim.scenarios.selftests), with the asserts the
selftests make, and the recorded runs of the real selftests in the QEMU oracle
(tests/kvmcheck/data/oracle/selftests/<release>.jsonl, built from linux-source-6.12;
<release>/<selftest>.trace.xz: the run's kvmmmu trace without the emulator's guest-walk
lines kvm_mmu_pagetable_walk / kvm_mmu_paging_element, which nothing compares)."""

from __future__ import annotations

import json
import lzma
import re
from functools import lru_cache
from pathlib import Path

import pytest

from tdpsim.kvmcheck.oracle import NPT_BITS, event_text, model_bits
from tdpsim.kvmcheck.selftest_trace import by_thread, comparable, model_records, vm_segments
from tdpsim.model.kvm import Kvm
from tdpsim.model.kvm_main import KVM_USER_MEM_SLOTS
from tdpsim.model.profile import KERNEL_6_1, KERNEL_6_12, KERNEL_6_18_HP_V3
from tdpsim.scenarios.selftests import (AMD_40BIT_MAX_GFN, MEM_REGION_SIZE, TEST_NPAGES,
                                        dirty_log_page_splitting_test, nx_huge_pages_test,
                                        pre_fault_memory_test, pre_fault_test_gpa,
                                        private_mem_kvm_exits_test, set_memory_region_test)
from tdpsim.trace import records as tr
from tdpsim.trace.parser import parse_trace as tr_parse

DATA = Path(__file__).parent / "data" / "oracle" / "selftests"
PROFILES = [KERNEL_6_1, KERNEL_6_12]


def _recorded(release: str) -> dict[str, dict]:
    return {json.loads(line)["name"]: json.loads(line)
            for line in (DATA / f"{release}.jsonl").read_text().splitlines()}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("disable", [False, True], ids=["nx", "nx-disabled"])
def test_nx_huge_pages_test_asserts_hold_in_the_model(profile, disable):
    run = nx_huge_pages_test(profile, disable_nx_huge_pages=disable)
    assert len(run.checks) == 16 and run.passed, run.failures()


def test_nx_huge_pages_test_counts_step_by_step():
    run = nx_huge_pages_test(KERNEL_6_12)
    got = [(c.stage, c.left) for c in run.checks]
    assert got[4:8] == [("GUEST_SYNC(2): read hpage_2", 2), ("GUEST_SYNC(2): read hpage_2", 0),
                        ("GUEST_SYNC(3): call hpage_1", 1), ("GUEST_SYNC(3): call hpage_1", 1)]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_dirty_log_page_splitting_test_asserts_hold_in_the_model(profile):
    run = dirty_log_page_splitting_test(profile)
    assert len(run.checks) == 5 and run.passed, run.failures()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_dirty_log_page_splitting_test_with_manual_protect_and_initially_set(profile):
    """INITIALLY_SET: nothing split at enable, everything at the first CLEAR."""
    run = dirty_log_page_splitting_test(profile, manual_caps=True)
    assert len(run.checks) == 6 and run.passed, run.failures()


def test_the_real_selftests_pass_on_6_12_where_the_model_passes_them():
    rec = _recorded("6.12.117+deb12-amd64")
    nx = rec["nx_huge_pages_test"]
    assert nx["returncode"] == 0 and "Running test with CAP_SYS_BOOT enabled" in nx["stdout"]
    assert rec["set_memory_region_test"]["returncode"] == 0
    split = rec["dirty_log_page_splitting_test_thp"]
    assert split["returncode"] == 0
    assert all(nx_huge_pages_test(KERNEL_6_12, disable_nx_huge_pages=d).passed for d in (0, 1))


def test_the_6_12_selftests_skip_on_6_1_for_want_of_set_user_memory_region2():
    rec = _recorded("6.1.0-50-amd64")
    assert {n: r["returncode"] for n, r in rec.items()} == {
        "nx_huge_pages_test": 4, "dirty_log_page_splitting_test": 4,
        "set_memory_region_test": 4}                                   # KSFT_SKIP
    assert all("require KVM_SET_USER_MEMORY_REGION2 (introduced in v6.8)" in r["stdout"]
               for r in rec.values())


# --- set_memory_region_test ---------------------------------------------------------------

REL_6_12 = "6.12.117+deb12-amd64"
SMR_TRACE = DATA / REL_6_12 / "set_memory_region_test.trace.xz"
#: the test region's 2 MiB frames at 3G and the one below (its misaligned MOVE)
SMR_GFNS = range(0xBFE00, 0xC0400)
#: the recorded run's timings the selftest allows (set_memory_region_test's docstring),
#: read off its trace by _timings and asserted exactly
LATE_FIRST_LOAD = {"move[quirk]#9"}
DIES_IN_SLOT0_WINDOW = {"delete[quirk]#4", "delete[quirk]#6", "delete[quirk]#7",
                        "delete[quirk]#8"}


@pytest.mark.parametrize("profile", [KERNEL_6_12, KERNEL_6_18_HP_V3], ids=lambda p: p.name)
def test_set_memory_region_test_asserts_hold_in_the_model(profile):
    """zero memslots 1, invalid flags 61, max memslots 3, 10 MOVEs x 7 and 10 DELETEs x 9
    with the slot-zap quirk and without."""
    run = set_memory_region_test(profile)
    assert len(run.checks) == 1 + 61 + 3 + 2 * (10 * 7 + 10 * 9) and run.passed, run.failures()
    assert list(run.events)[:3] == ["zero_memory_regions", "move[quirk]#0", "move[quirk]#1"]
    assert len(run.events) == 41


def test_set_memory_region_test_ran_as_the_model_runs_it_on_6_12():
    rec = _recorded(REL_6_12)["set_memory_region_test"]
    assert rec["returncode"] == 0 and rec["trace_overruns"] == 0
    out = rec["stdout"].splitlines()
    assert f"Allowed number of memory slots: {KVM_USER_MEM_SLOTS}" in out
    assert (f"Adding slots 0..{KVM_USER_MEM_SLOTS - 1}, each memory region with "
            f"{MEM_REGION_SIZE >> 10}K size") in out
    # Debian's 6.12 has no KVM_X86_SW_PROTECTED_VM: the model's default config
    assert "Skipping tests for KVM_MEM_GUEST_MEMFD memory regions" in out
    tests = [m.groups() for m in (re.match(r"Testing (MOVE|DELETE) of in-use region, (\d+) "
                                           r"loops, slot zap quirk (\w+)", line) for line in out) if m]
    assert tests == [("MOVE", "10", "enabled"), ("DELETE", "10", "enabled"),
                     ("MOVE", "10", "disabled"), ("DELETE", "10", "disabled")]


@lru_cache(maxsize=None)
def _smr_kernel_vms():
    with lzma.open(SMR_TRACE, "rt") as f:
        return vm_segments(f, filename=str(SMR_TRACE))


def _timings(names, vms):
    """(MOVE VMs whose first mapping of the region is 4K, i.e. made after the first
    move; DELETE VMs with the quirk whose vCPU died before slot 0's fast zap, which the
    trace then shows after the vCPU's last event, as teardown)."""
    late = {n for n, vm in zip(names, vms) if n.startswith("move") and next(
        r.level for r in vm["vcpu"] if isinstance(r, tr.KvmMmuSetSpte) and r.gfn in SMR_GFNS) == 1}
    died = {n for n, vm in zip(names, vms) if n.startswith("delete[quirk]") and sum(
        isinstance(r, tr.KvmMmuZapAllFast) for r in vm["main"]) == 2}
    return late, died


def _smr_mismatches(run, vms):
    bits = model_bits(Kvm(profile=KERNEL_6_12, vendor="amd").masks)
    bad, compared = {}, 0
    for i, (name, kernel) in enumerate(zip(run.events, vms)):
        gfns = None if i == 0 else SMR_GFNS     # the first VM has no slot but the MMIO gfn
        model = by_thread(run.events[name])
        for thread in sorted(set(kernel) | set(model)):
            k = comparable(kernel.get(thread, []), NPT_BITS, KERNEL_6_12, gfns)
            m = comparable(model_records(model.get(thread, [])), bits, KERNEL_6_12, gfns)
            compared += len(k)
            if k != m:
                j = next((j for j, (a, b) in enumerate(zip(k, m)) if a != b), min(len(k), len(m)))
                bad[(name, thread)] = (f"event {j}: kernel {event_text(k[j]) if j < len(k) else '-'}"
                                       f" != model {event_text(m[j]) if j < len(m) else '-'}")
    return bad, compared


def test_set_memory_region_test_events_agree_with_the_recorded_6_12_trace():
    """Every VM of the recorded run, thread by thread: each fault and every change of a
    real SPTE, table and shadow page in the test region (kvmcheck.selftest_trace)."""
    vms = _smr_kernel_vms()
    names = list(set_memory_region_test(KERNEL_6_12, loops=10, max_memslots=False).events)
    assert len(vms) == len(names) == 41
    assert _timings(names, vms) == (LATE_FIRST_LOAD, DIES_IN_SLOT0_WINDOW)
    run = set_memory_region_test(KERNEL_6_12, max_memslots=False,
                                 late_first_load=LATE_FIRST_LOAD,
                                 dies_in_slot0_window=DIES_IN_SLOT0_WINDOW)
    assert run.passed, run.failures()
    bad, compared = _smr_mismatches(run, vms)
    assert bad == {} and compared == 24603, bad


def test_set_memory_region_test_comparison_sees_a_different_timing():
    """Without the recorded timings the model's run differs exactly where they act."""
    bad, _ = _smr_mismatches(set_memory_region_test(KERNEL_6_12, max_memslots=False),
                             _smr_kernel_vms())
    assert set(bad) == {("move[quirk]#9", "main"), ("move[quirk]#9", "vcpu")} | {
        (n, "main") for n in DIES_IN_SLOT0_WINDOW}


# --- pre_fault_memory_test ----------------------------------------------------------------

PRE_FAULT_TRACE = DATA / REL_6_12 / "pre_fault_memory_test.trace.xz"


@pytest.mark.parametrize("profile", [KERNEL_6_12, KERNEL_6_18_HP_V3], ids=lambda p: p.name)
def test_pre_fault_memory_test_asserts_hold_in_the_model(profile):
    run = pre_fault_memory_test(profile)
    # 1 + 2 + 1 ioctls, each call's size/ret assert, then size and ret per range, vcpu_run
    assert [c.left for c in run.checks if c.what == "range.size == left"] == [0, 4096, 4096]
    assert len(run.checks) == 4 + 3 * 2 + 1 and run.passed, run.failures()


def test_pre_fault_memory_test_needs_kvm_pre_fault_memory():
    """6.1 has no KVM_PRE_FAULT_MEMORY (v6.11): every ioctl is -EINVAL."""
    run = pre_fault_memory_test(KERNEL_6_1)
    assert not run.passed and {c.left for c in run.checks if c.what.startswith("ret")} == {-22}


def test_pre_fault_memory_test_agrees_with_the_recorded_6_12_run():
    rec = _recorded(REL_6_12)["pre_fault_memory_test"]
    assert rec["returncode"] == 0 and rec["trace_overruns"] == 0
    # Debian's 6.12 has no KVM_X86_SW_PROTECTED_VM: both private variants skip
    assert rec["stdout"].count("Skipping tests for vm_type 0x1") == 2
    with lzma.open(PRE_FAULT_TRACE, "rt") as f:
        (vm,) = vm_segments(f, filename=str(PRE_FAULT_TRACE))
    base = pre_fault_test_gpa(AMD_40BIT_MAX_GFN) >> 12
    assert base == 0xFCFFC00
    # the test slot, the gfn after it (no memslot: MMIO) and their 2M entries
    gfns = range(base, base + TEST_NPAGES + 1)
    first = next(r for r in vm["main"] if isinstance(r, tr.KvmMmuSpteRequested))
    assert first.gfn == base                       # where the recorded selftest put it
    run = pre_fault_memory_test(KERNEL_6_12)
    bits = model_bits(Kvm(profile=KERNEL_6_12, vendor="amd").masks)
    kernel = comparable(vm["main"], NPT_BITS, KERNEL_6_12, gfns)
    model = comparable(model_records(by_thread(run.events["vm"])["main"]), bits, KERNEL_6_12,
                       gfns)
    assert kernel == model and len(kernel) == 1031
    # every page maps the (4K) zero page read-only and not accessed (a prefetch fault)
    assert {e[3] for e in kernel if e[0] == "kvm_mmu_set_spte"} == {"LX"}


def test_the_other_recorded_6_12_selftests_pass():
    """Recorded, not modelled: kvm_page_table_test (timed create / update / adjust
    mapping stages; asserts only that each ioctl and guest stage succeeds) and
    memslot_modification_stress_test (a memslot added and deleted 20 times under a
    memstress vCPU)."""
    rec = _recorded(REL_6_12)
    page_table = rec["kvm_page_table_test_thp"]
    assert page_table["returncode"] == 0 and "KVM_ADJUST_MAPPINGS: total execution time" in \
        page_table["stdout"] and "-s anonymous_thp" in page_table["command"]
    stress = rec["memslot_modification_stress_test"]
    assert stress["returncode"] == 0 and "All vCPU threads joined" in stress["stdout"]
    assert "Memslot zap quirk enabled" in stress["stdout"]


# --- the small 6.12 build with KVM_X86_SW_PROTECTED_VM (selftests/6.12.117*) ---------------

REL_TINY = "6.12.117"


def test_the_private_memory_selftests_pass_on_the_sw_protected_6_12_build():
    rec = _recorded(REL_TINY)
    assert {n: r["returncode"] for n, r in rec.items()} == {
        "private_mem_kvm_exits_test": 0, "private_mem_conversions_test": 0,
        "pre_fault_memory_test": 0}
    # with KVM_X86_SW_PROTECTED_VM nothing is skipped (Debian's 6.12 skips both variants)
    assert "Skipping" not in rec["pre_fault_memory_test"]["stdout"]
    assert all(r["trace_overruns"] == 0 for r in rec.values())


@pytest.mark.parametrize("profile", [KERNEL_6_12, KERNEL_6_18_HP_V3], ids=lambda p: p.name)
@pytest.mark.parametrize("early", [False, True], ids=["read-after-delete", "read-before"])
def test_private_mem_kvm_exits_test_asserts_hold_in_the_model(profile, early):
    run = private_mem_kvm_exits_test(profile, read_before_delete=early)
    assert len(run.checks) == 2 * 5 and run.passed, run.failures()


def test_private_mem_kvm_exits_test_agrees_with_the_recorded_run():
    """The private page's only event in both VMs is the vCPU's fault (nothing is ever
    mapped there: the first read came after the delete in the recorded run)."""
    path = DATA / REL_TINY / "private_mem_kvm_exits_test.trace.xz"
    with lzma.open(path, "rt") as f:
        recs = list(tr_parse(f, filename=str(path)))
    gfns = range(0xC0000, 0xC0001)
    kernel = comparable(recs, NPT_BITS, KERNEL_6_12, gfns)
    run = private_mem_kvm_exits_test(KERNEL_6_12)
    bits = model_bits(Kvm(profile=KERNEL_6_12, vendor="amd").masks)
    model = comparable(model_records(e for vm in run.events.values() for _, e in vm), bits,
                       KERNEL_6_12, gfns)
    assert kernel == model == [("kvm_page_fault", 0xC0000000, 0x100000004)]
    early = private_mem_kvm_exits_test(KERNEL_6_12, read_before_delete=True)
    assert comparable(model_records(e for vm in early.events.values() for _, e in vm), bits,
                      KERNEL_6_12, gfns) != kernel      # that timing maps the page first
