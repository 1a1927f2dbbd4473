"""Live tests on the host's /dev/kvm (skipped, with the reason, when KVM is unusable)."""

import errno

import pytest

from tdpsim.kvmcheck import uapi as u
from tdpsim.kvmcheck.guest import PAGE_2M, PAGE_4K
from tdpsim.kvmcheck.host_matrix import (DEFAULT_MATRIX, HostScenario, PageCounts,
                                         host_facts, run_host_matrix, run_host_scenario)
from tdpsim.kvmcheck.vm import (GuestError, HostMemory, KvmError, KvmSystem, KvmUnavailable,
                                TouchGuest, fill_window)

MiB = 1 << 20


def _kvm_reason():
    try:
        with KvmSystem() as kvm:
            with kvm.create_vm():
                pass
    except (KvmUnavailable, KvmError) as e:
        return str(e)
    return None


_REASON = _kvm_reason()
needs_kvm = pytest.mark.skipif(_REASON is not None, reason=f"/dev/kvm unusable: {_REASON}")

#: the seven rows measured when this host was first probed: name -> (4K, 2M, 1G)
OBSERVED = {
    "aligned": (0, 8, 0),
    "gpa-skew-4k": (4096, 0, 0),
    "hva-skew-4k": (4096, 0, 0),
    "both-skew-4k": (512, 7, 0),
    "dirty-log-before-touch": (4096, 0, 0),
    "thp-off": (4096, 0, 0),
    "guest-4k": (4096, 0, 0),
}


@pytest.fixture(scope="module")
def matrix():
    return {r.scenario.name: r for r in run_host_matrix(DEFAULT_MATRIX, repeats=2)}


def test_default_matrix_has_required_rows():
    names = {s.name for s in DEFAULT_MATRIX}
    assert set(OBSERVED) <= names
    for s in DEFAULT_MATRIX:
        if s.name in OBSERVED:
            assert s.expected == PageCounts(*OBSERVED[s.name])
    kinds = {(s.access, s.dirty_log, s.thp_split, s.hugetlb, s.slot_size % PAGE_2M != 0)
             for s in DEFAULT_MATRIX}
    assert ("read", "off", None, False, False) in kinds
    assert ("exec", "off", None, False, False) in kinds
    assert any(k[4] for k in kinds)                                   # tail frame
    assert any(k[1] == "after_mapping" for k in kinds)
    assert any(k[1] == "after_mapping_then_disable" for k in kinds)
    assert any(k[2] for k in kinds)                                   # THP split
    assert any(k[3] for k in kinds)                                   # hugetlb


@needs_kvm
def test_native_execution_took_effect(matrix):
    r = matrix["aligned"]
    assert r.native is not None
    assert r.native.took_effect, (
        f"vCPU kept emulating ({r.native}); all SPTE counts below would be 0")


@needs_kvm
@pytest.mark.parametrize("name", sorted(OBSERVED))
def test_observed_rows(matrix, name):
    r = matrix[name]
    assert r.skipped is None
    got = (r.pages_4k, r.pages_2m, r.pages_1g)
    assert got == OBSERVED[name], f"{name}: {r.final} [{r.phases}]"
    assert r.repeatable, r.repeat_mismatches


@needs_kvm
def test_all_rows_match_expectations_and_repeat(matrix):
    bad = []
    for name, r in matrix.items():
        if r.skipped:
            assert r.scenario.hugetlb and "hugetlb pool" in r.skipped
            continue
        if not r.matches_expected:
            bad.append(f"{name}: got {r.final}, expected {r.scenario.expected}")
        if not r.repeatable:
            bad.append(f"{name}: not repeatable {r.repeat_mismatches}")
    assert not bad, "\n".join(bad)


@needs_kvm
def test_phases_of_dirty_logging(matrix):
    r = matrix["dirty-log-disable-again"]
    assert [p.name for p in r.phases] == ["touch", "dirty_log_on", "write_logged",
                                          "dirty_log_off", "touch_again"]
    assert r.phase("touch").pages == PageCounts(0, 8, 0)
    assert r.phase("write_logged").dirty_pages == 4096
    assert r.phase("write_logged").pages == PageCounts(4096, 0, 0)
    assert r.phase("touch_again").pages == PageCounts(0, 8, 0)
    assert r.stat_deltas.get("pf_fixed", 0) > 0


@needs_kvm
def test_thp_split_phase(matrix):
    r = matrix["thp-split-dontneed"]
    split = r.phase("thp_split_dontneed")
    assert split.host_huge_frames[0] is False and all(split.host_huge_frames[1:])
    assert r.phase("touch").host_huge_frames == (True,) * 8


@needs_kvm
def test_results_report_host_facts(matrix):
    r = matrix["aligned"]
    assert r.kvm_params.get("tdp_mmu") in ("Y", "N")
    assert r.kernel_release
    assert r.vendor_modules


@needs_kvm
def test_emulated_guest_creates_no_sptes():
    facts = host_facts()
    if "kvm_pvm" not in facts["vendor_modules"]:
        pytest.skip("emulation-by-default is specific to the kvm_pvm build")
    r = run_host_scenario(HostScenario("aligned-emulated"), repeats=1, native=False, facts=facts)
    assert not r.native.took_effect
    assert r.final == PageCounts(0, 0, 0)
    assert r.phase("touch").counters["insn_emulation"] >= 4 * 4096


@needs_kvm
def test_ioctl_error_message_from_kvm():
    with KvmSystem() as kvm, kvm.create_vm() as vm:
        with pytest.raises(KvmError) as ei:
            vm.set_user_memory_region(1, 1 << 30, 4096 + 1, 0x7000_0000_0000)  # size not page aligned
    assert str(ei.value) == f"KVM_SET_USER_MEMORY_REGION failed: EINVAL ({errno.EINVAL})"


@needs_kvm
def test_unmapped_gpa_is_mmio_exit_and_stats_fd():
    with KvmSystem() as kvm, TouchGuest(kvm, "write") as g:
        mem = HostMemory(2 * MiB)
        fill_window(mem, "write")
        g.add_window(1, 1 << 30, mem, guest_page_size=PAGE_4K)
        g.pt.map(2 << 30, (2 << 30) + PAGE_4K, PAGE_4K)      # guest-mapped, no memslot
        g.finalize()
        g.touch(1 << 30, 512)
        with pytest.raises(GuestError) as ei:
            g.touch(2 << 30, 1)
        assert ei.value.exit.reason == u.KVM_EXIT_MMIO
        assert ei.value.exit.mmio_addr == 2 << 30 and ei.value.exit.mmio_is_write
        vm_stats, vcpu_stats = g.vm.stats(), g.vcpu.stats()
        for k in ("pages_4k", "pages_2m", "pages_1g", "remote_tlb_flush"):
            assert k in vm_stats
        for k in ("pf_fixed", "exits", "insn_emulation", "halt_exits"):
            assert k in vcpu_stats
        assert mem.read(0, 1) == b"\x01"                      # the guest's write landed
        assert mem.huge_frames() == (True,)


@needs_kvm
def test_readonly_slot_read_ok_write_is_mmio():
    with KvmSystem() as kvm, TouchGuest(kvm, "read") as g:
        mem = HostMemory(2 * MiB)
        fill_window(mem, "read")
        g.add_window(1, 1 << 30, mem, guest_page_size=PAGE_2M, flags=u.KVM_MEM_READONLY)
        g.finalize()
        g.touch(1 << 30, 512)                                  # reads are fine
        with pytest.raises(GuestError) as ei:
            g.touch(1 << 30, 1, access="write")
        assert ei.value.exit.reason == u.KVM_EXIT_MMIO and ei.value.exit.mmio_is_write
