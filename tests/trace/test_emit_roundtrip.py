"""The emitter (model events → kernel trace lines) and the round trip: drive the core
model, emit the trace, replay it, and compare with the model's own ``kvm.stat.pages``."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from tdpsim.model import events as ev
from tdpsim.model import kvm_main
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMORY_ATTRIBUTE_PRIVATE
from tdpsim.model.mmu_fault import kvm_mmu_load
from tdpsim.model.policy import Policy
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.spte import kvm_mmu_set_ept_masks
from tdpsim.trace import parse_line, parse_trace
from tdpsim.trace import records as tr
from tdpsim.trace.emit import TraceEmitter, model_event_to_record
from tdpsim.trace.replay import ReplayOptions, replay_trace

EPT = kvm_mmu_set_ept_masks(DEFAULT_PROFILE)

sys.path.insert(0, str(Path(__file__).parent))
from replay_helpers import Driver  # noqa: E402

PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE


# --- emitter -------------------------------------------------------------------------------

def test_emitter_header_and_exact_line():
    buf = io.StringIO()
    em = TraceEmitter(buf, nr_cpus=4)
    with em.task(vcpu=2):
        em(ev.KvmTdpMmuSpteChanged(0, 0x200, 2, 0x8000000000000000, 0x8600002000200bb7))
    em(ev.KvmFlushRemoteTlbs(0, 512))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "cpus=4"
    assert lines[1] == ("       CPU 2/KVM-4102  [002] 1.000000: kvm_tdp_mmu_spte_changed: "
                        "as id 0 gfn 200 level 2 old_spte 8000000000000000 "
                        "new_spte 8600002000200bb7")
    assert em.skipped == {"KvmFlushRemoteTlbs": 1} and em.lines == 1


def test_emitter_clock_is_deterministic_and_monotonic():
    a, b = io.StringIO(), io.StringIO()
    for buf in (a, b):
        em = TraceEmitter(buf, header=False, step_ns=3000)
        for i in range(10):
            em(ev.KvmMmuSpteRequested(i, i, 1))
    assert a.getvalue() == b.getvalue()
    recs = list(parse_trace(io.StringIO(a.getvalue())))
    ts = [r.timestamp_ns for r in recs]
    assert ts == sorted(ts) and ts[-1] - ts[0] == 27000  # printed in microseconds


@pytest.mark.parametrize("event", [
    ev.KvmPageFault(1, 0xfff0, 0x800000201000, 0x182),
    ev.KvmMmuSpteRequested(0x201, 0x2000201, 2),
    ev.KvmMmuSetSpte.assign(EPT, 0x201, 0x8600002000201b77, 1, 0x100003008),
    ev.KvmMmuSetSpte.assign(EPT, 0x201, 0x8600002000201b35, 1, 0x100003008),  # read-only, no X
    ev.KvmTdpMmuSpteChanged(0, 0x200, 2, 0x8000000100003907, 0x80000000000005a0),
    ev.KvmMmuSplitHugePage(0x200, 0x8600002000200bb7, 2, -16),
    ev.KvmMmuGetPage(ev.KvmMmuPage(0, 0x200, 0x83701, 0, False), True),
    ev.KvmMmuPrepareZapPage(ev.KvmMmuPage(1, 0x200, 0x83701, 0, False)),
    ev.MarkMmioSpte(0x100003008, 0x900, 0, 0x12),
])
@pytest.mark.parametrize("page_style", ["kernel", "raw"])
def test_every_tracepoint_event_round_trips_through_the_parser(event, page_style):
    buf = io.StringIO()
    em = TraceEmitter(buf, header=False, page_style=page_style)
    em(event)
    line = buf.getvalue().rstrip("\n")
    rec = parse_line(line)
    assert rec is not None and rec == em_record(event, page_style)
    assert rec.EVENT == {"KvmMmuPage": None}.get(type(event).__name__, rec.EVENT)


def em_record(event, page_style):
    rec = model_event_to_record(event, comm="qemu-system-x86", pid=4000, cpu=0,
                                timestamp="1.000000", page_style=page_style)
    return rec


def test_page_roles_kernel_style_lose_is_mirror_raw_keeps_it():
    page = ev.KvmMmuPage(0, 0, 0x83704, 0, False)  # level 4, is_mirror
    k = model_event_to_record(ev.KvmMmuGetPage(page, True), comm="c", pid=1, cpu=0,
                              timestamp="0.0")
    r = model_event_to_record(ev.KvmMmuGetPage(page, True), comm="c", pid=1, cpu=0,
                              timestamp="0.0", page_style="raw")
    assert not k.is_mirror and r.is_mirror and k.level == r.level == 4
    with pytest.raises(ValueError):
        model_event_to_record(ev.KvmMmuGetPage(page, True), comm="c", pid=1, cpu=0,
                              timestamp="0.0", page_style="plugin")


def test_set_spte_flags_follow_tp_fast_assign():
    rec = model_event_to_record(ev.KvmMmuSetSpte.assign(EPT, 1, 0x8600002000201b35, 1, 0x1000),
                                comm="c", pid=1, cpu=0, timestamp="0.0")
    assert isinstance(rec, tr.KvmMmuSetSpte)
    assert (rec.r, rec.w, rec.x, rec.u) == (True, False, True, 1)


def test_emitter_open_writes_a_file(tmp_path):
    path = tmp_path / "out.txt"
    with TraceEmitter.open(path) as em:
        em(ev.KvmMmuSpteRequested(1, 2, 1))
    assert path.read_text().splitlines()[1].endswith("kvm_mmu_spte_requested: gfn 1 pfn 2 level 1")


# --- round trip ------------------------------------------------------------------------------

def _replay(d: Driver, **kw):
    result = replay_trace(d.lines(), ReplayOptions(policy=d.policy, **kw))
    assert result.anomalies == [], "\n".join(map(str, result.anomalies))
    assert result.anomaly_counts == {}
    assert result.pages == d.kvm.stat.pages, (result.pages, d.kvm.stat.pages)
    return result


def test_round_trip_plain_vm_faults_split_recover_zap_all():
    d = Driver()
    for g in (0, 1, 0x200, 0x400, 0x401, 0x1000, 0x3000):
        d.fault(g, vcpu=g & 1)
    slot = d.kvm.memslots[0]
    kvm_main.kvm_mmu_slot_apply_flags(d.kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)  # eager split
    assert d.kvm.stat.pages[0] > 0
    for g in range(0x10, 0x30):
        d.fault(g, write=True)
    d.fault(0x3005, write=False)
    kvm_main.kvm_mmu_slot_apply_flags(d.kvm, slot, 0)  # recovery: promotions
    kvm_main.kvm_mmu_zap_all_fast(d.kvm)  # new root, old one zapped
    for v in d.kvm.vcpus:
        kvm_mmu_load(v)
    for g in range(0, 0x800, 0x100):
        d.fault(g, vcpu=1)
    r = _replay(d)
    assert r.counters["splits"] >= 4 and r.counters["promotions"] >= 4
    assert r.counters["tables_removed"] >= 4
    assert [x.valid for x in r.roots] == [False, True]
    assert r.actors["vcpu0"].faults + r.actors["vcpu1"].faults == r.counters["faults"]


def test_round_trip_nx_huge_pages():
    d = Driver(policy=Policy(nx_huge_pages=True))
    d.fault(0x10, exec=True)
    d.fault(0x20)
    d.fault(0x400)
    kvm_main.kvm_recover_nx_huge_pages(d.kvm, 1)
    d.fault(0x30)
    kvm_main.kvm_mmu_slot_apply_flags(d.kvm, d.kvm.memslots[0], KVM_MEM_LOG_DIRTY_PAGES)
    d.fault(0x401, exec=True)
    _replay(d)


@pytest.mark.parametrize("page_style", ["kernel", "raw"])
@pytest.mark.parametrize("tdx_huge_page", [True, False])
def test_round_trip_td_conversions(page_style, tdx_huge_page):
    policy = Policy(tdx_huge_page=tdx_huge_page)
    d = Driver(tdx=True, page_style=page_style, policy=policy)
    d.kvm.x86_ops.private_max_level = 2 if tdx_huge_page else 1
    for g in (0, 0x200, 0x400, 0x600):
        d.fault(g, vcpu=g >> 9 & 1)
    kvm_main.kvm_vm_set_mem_attributes(d.kvm, 0x201, 0x204, 0)  # private → shared
    for g in (0x201, 0x202, 0x203):
        d.fault(g, private=False)
    kvm_main.kvm_vm_set_mem_attributes(d.kvm, 0x600, 0x800, 0)  # a whole 2M frame
    d.fault(0x600, private=False)
    kvm_main.kvm_vm_set_mem_attributes(d.kvm, 0x201, 0x204, PRIVATE)  # and back
    for g in (0x201, 0x202):
        d.fault(g)
    r = _replay(d)
    kinds = [x.kind for x in r.roots]
    assert kinds == ["mirror", "direct"]
    if tdx_huge_page:
        assert r.counters["splits"] >= 1  # HP-v3 demotes the 2M mirror leaf first
    assert r.counters["mirror_promotions"] == 0


def test_round_trip_td_unpatched_promotion_is_flagged():
    """Without the SEED patch the model promotes over a mirror table (and bugs the VM);
    the replayer sees exactly that in the trace."""
    d = Driver(tdx=True, policy=Policy(mirror_promotion="unpatched"))
    d.fault(0x200)
    kvm_main.kvm_vm_set_mem_attributes(d.kvm, 0x201, 0x202, 0)
    d.fault(0x201, private=False)
    kvm_main.kvm_vm_set_mem_attributes(d.kvm, 0x201, 0x202, PRIVATE)
    d.fault(0x201)
    assert d.kvm.vm_bugged
    r = replay_trace(d.lines(), ReplayOptions(policy=d.policy))
    assert r.pages == d.kvm.stat.pages
    assert [a.kind for a in r.anomalies] == ["mirror_promotion"]
    assert "kvm_tdp_mmu_spte_changed" in r.anomalies[0].lines[0].text


def test_round_trip_through_a_file(tmp_path):
    path = tmp_path / "trace.txt"
    with TraceEmitter.open(path) as em:
        d = Driver()
        d.em = em
        d.kvm.tracer = em
        for g in (0, 0x200, 0x201):
            d.fault(g)
    r = replay_trace(path, ReplayOptions(policy=d.policy))
    assert r.ok and r.pages == d.kvm.stat.pages
