"""Replayer unit tests: root attribution, tolerances, learning mode, bounded memory,
and the anomalies not covered by the golden files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.policy import Policy
from tdpsim.trace import records as R
from tdpsim.trace.formats import format_line
from tdpsim.trace.parser import TraceParseError
from tdpsim.trace.replay import (
    ANOMALY_KINDS,
    ReplayOptions,
    TraceReplayer,
    replay_records,
    replay_trace,
)

sys.path.insert(0, str(Path(__file__).parent))
from replay_helpers import Driver  # noqa: E402

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs

NP = DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE
FZ = DEFAULT_PROFILE.FROZEN_SPTE
_MT = (6 << 3) | (1 << 6)


def leaf(pfn, level=1, write=True):
    acc = S.ACC_ALL if write else S.ACC_ALL & ~S.ACC_WRITE_MASK
    return S.make_spte(EPT, level=level, ad_disabled=False, pte_access=acc, pfn=pfn, old_spte=NP,
                       prefetch=False, host_writable=True, nx_huge_page_enabled=False,
                       mt_mask=_MT)


def table(pfn):
    return S.make_nonleaf_spte(EPT, pfn, False)


class T:
    """A tiny trace builder (one task unless switched)."""

    def __init__(self):
        self.lines: list[str] = []
        self.pid, self.comm = 4100, "CPU 0/KVM"

    def add(self, cls, *a, **kw):
        n = len(self.lines)
        self.lines.append(format_line(cls(*a, comm=self.comm, pid=self.pid, cpu=0,
                                          timestamp=f"1.{n:06d}", **kw)))
        return n + 1

    def as_vmm(self):
        self.pid, self.comm = 4000, "qemu-system-x86"
        return self

    def root(self, mirror=None):
        role = R.make_role(level=4, direct=True, access=7, efer_nx=True, is_mirror=bool(mirror))
        if mirror is None:
            return self.add(R.KvmMmuGetPage, 0, 0, role & R.ROLE_KERNEL_MASK, 0, False)
        return self.add(R.KvmMmuGetPage, 0, 0, role, 0, False, style="raw")

    def ch(self, gfn, level, old, new):
        return self.add(R.KvmTdpMmuSpteChanged, 0, gfn, level, old, new)

    def pf(self, gpa):
        return self.add(R.KvmPageFault, 0, 0, gpa, 0x182)

    def set_spte(self, gfn, spte, level, at):
        return self.add(R.KvmMmuSetSpte, gfn, spte, level, at, True, bool(spte & 2), True, 1)

    def tables_to_l1(self, base=0x200, pt=0x100):
        self.ch(0, 4, NP, table(pt + 1))
        self.ch(0, 3, NP, table(pt + 2))
        self.ch(base, 2, NP, table(pt + 3))

    def replay(self, **kw):
        return replay_trace(self.lines, ReplayOptions(**kw))


def test_every_anomaly_kind_is_documented():
    assert all(isinstance(v, str) and v for v in ANOMALY_KINDS.values())


def test_simple_install_and_zap_keep_stats():
    t = T()
    t.root()
    t.tables_to_l1()
    t.ch(0x201, 1, NP, leaf(0x5001))
    t.ch(0x202, 1, NP, leaf(0x5002))
    t.ch(0x201, 1, leaf(0x5001), NP)
    r = t.replay()
    assert r.ok and r.pages == [1, 0, 0]
    assert r.counters["installs"] == 2 and r.counters["leaf_zaps"] == 1
    assert r.counters["links"] == 3


def test_hardware_dirty_bit_is_tolerated_but_other_bits_are_not():
    t = T()
    t.root()
    t.tables_to_l1()
    clean = leaf(0x5001) & ~EPT.shadow_dirty_mask  # writable, not yet dirty
    t.ch(0x201, 1, NP, clean)
    t.ch(0x201, 1, clean | EPT.shadow_dirty_mask, NP)  # the CPU set D behind our back
    r = t.replay()
    assert r.ok and r.counters["hw_ad_updates"] == 1
    t.ch(0x202, 1, NP, leaf(0x5002, write=False))
    bad = t.ch(0x202, 1, leaf(0x5002, write=False) | S.PT_WRITABLE_MASK, NP)
    r = t.replay()
    assert [(a.kind, a.lineno) for a in r.anomalies] == [("old_spte_mismatch", bad)]


def test_td_roots_inferred_and_installs_attributed_by_fault_address():
    """Kernel-style page text hides is_mirror: two roots back to back = a TD, mirror
    first; the shared bit of kvm_page_fault.address sends the install to the direct root."""
    t = T()
    t.as_vmm().root()
    t.root()
    t.pid, t.comm = 4100, "CPU 0/KVM"
    shared = 1 << 47
    t.pf(0x201000)
    t.tables_to_l1(pt=0x100)
    t.ch(0x201, 1, NP, leaf(0x9001))
    t.pf(shared | 0x201000)
    t.tables_to_l1(pt=0x200)
    t.ch(0x201, 1, NP, leaf(0x7001))
    # zaps are unambiguous: the present old value picks the root
    t.as_vmm()
    t.ch(0x201, 1, leaf(0x7001), NP)
    t.ch(0x201, 1, leaf(0x9001), NP)
    r = t.replay()
    assert r.ok, [str(a) for a in r.anomalies]
    assert [x.kind for x in r.roots] == ["mirror", "direct"]
    assert [x.changes for x in r.roots] == [5, 5]


def test_set_spte_at_reattributes_a_wrong_guess():
    """Without a fault event, a tie goes to the root the task last wrote (mirror here);
    set_spte's 'at' (a table of the direct root) moves the install there."""
    t = T()
    t.as_vmm().root(mirror=True)
    t.root(mirror=False)
    t.pid, t.comm = 4100, "CPU 0/KVM"
    t.pf((1 << 47) | 0x201000)
    t.tables_to_l1(pt=0x200)  # direct (fault hint)
    t.pf(0x201000)
    t.tables_to_l1(pt=0x100)  # mirror (fault hint)
    t.add(R.KvmEntry, 0, 0)  # hint gone
    t.ch(0x203, 1, NP, leaf(0x7003))  # tie → the task's last root (mirror), wrongly
    t.set_spte(0x203, leaf(0x7003), 1, (0x203 << 12) + 3 * 8)  # the direct L1 table
    t.as_vmm()
    t.ch(0x203, 1, leaf(0x7003), NP)
    r = t.replay(tdx=True)
    assert r.ok, [str(a) for a in r.anomalies]
    assert r.counters["reattributed"] == 1


def test_set_spte_disagreeing_with_replayed_value():
    t = T()
    t.root()
    t.tables_to_l1(pt=0x100)
    t.ch(0x201, 1, NP, leaf(0x5001))
    bad = t.set_spte(0x201, leaf(0x5999), 1, (0x103 << 12) + 8)
    r = t.replay()
    assert [(a.kind, a.lineno) for a in r.anomalies] == [("set_spte_mismatch", bad)]


def test_frozen_outside_removal_and_prepare_zap_mismatch():
    t = T()
    t.root()
    t.tables_to_l1()
    a = t.ch(0x200, 1, NP, FZ)
    b = t.add(R.KvmMmuPrepareZapPage, 0, 0x400, R.make_role(level=1), 0, False)
    r = t.replay()
    assert sorted((x.kind, x.lineno) for x in r.anomalies) == [
        ("frozen_outside_removal", a), ("prepare_zap_mismatch", b)]


def test_split_event_without_link_and_link_without_split_event():
    huge = leaf(0x40000, 2)
    t = T()
    t.root()
    t.ch(0, 4, NP, table(0x101))
    t.ch(0, 3, NP, table(0x102))
    t.ch(0x200, 2, NP, huge)
    bad = t.add(R.KvmMmuSplitHugePage, 0x400, huge, 2, 0)  # nothing was split there
    t.ch(0x200, 2, huge, table(0x103))
    late = len(t.lines)
    t.ch(0x201, 1, S.make_small_spte(EPT, huge, 1, 1, S.ACC_ALL, False), NP)
    r = t.replay()
    assert sorted((x.kind, x.lineno) for x in r.anomalies) == [
        ("split_mismatch", bad), ("split_mismatch", late)]
    assert r.pages == [511, 0, 0]


def test_leaf_pfn_change_table_replaced_and_mirror_leaf_change():
    t = T()
    t.root(mirror=True)
    t.tables_to_l1()
    t.ch(0x201, 1, NP, leaf(0x5001))
    a = t.ch(0x201, 1, leaf(0x5001), leaf(0x5002))
    b = t.ch(0x202, 1, NP, leaf(0x5003))
    c = t.ch(0x202, 1, leaf(0x5003), leaf(0x5003) & ~S.PT_WRITABLE_MASK)
    d = t.ch(0x200, 2, table(0x103), table(0x104))
    r = t.replay()
    kinds = sorted((x.kind, x.lineno) for x in r.anomalies)
    assert ("leaf_pfn_change", a) in kinds and ("mirror_leaf_change", c) in kinds
    assert ("table_replaced", d) in kinds
    assert b not in [x.lineno for x in r.anomalies]


def test_unknown_table_and_misaligned():
    t = T()
    t.root()
    a = t.ch(0x200, 1, NP, leaf(0x5001))  # no L1 table was ever linked
    b = t.ch(0x201, 2, NP, leaf(0x5001, 2))
    r = t.replay()
    kinds = {(x.kind, x.lineno) for x in r.anomalies}
    assert ("unknown_table", a) in kinds and ("misaligned", b) in kinds


def test_learning_mode_for_a_capture_started_mid_run():
    t = T()
    t.ch(0x201, 1, leaf(0x5001), NP)  # we never saw the VM built
    t.ch(0x201, 1, NP, leaf(0x5001))
    t.ch(0x201, 1, leaf(0x5001), NP)
    r = t.replay()
    assert r.ok and r.learning and r.pages == [-1, 0, 0]  # a delta


def test_direct_1g_allowed_by_default_but_not_with_max_level():
    t = T()
    t.root()
    t.ch(0, 4, NP, table(0x101))
    line = t.ch(0x40000, 3, NP, leaf(0x80000, 3))
    assert t.replay().ok
    r = t.replay(max_level_direct=2)
    assert [(a.kind, a.lineno) for a in r.anomalies] == [("level_too_high", line)]


def test_samples_are_bounded():
    d = Driver()
    for g in range(0, 0x4000, 0x200):
        d.fault(g)
    r = replay_trace(d.lines(), ReplayOptions(sample_every=1, max_samples=8))
    assert len(r.samples) <= 9
    assert r.samples[-1].pages_2m == d.kvm.stat.pages[1]
    lines = [s.lineno for s in r.samples]
    assert lines == sorted(lines)


def test_anomaly_examples_are_bounded_but_counted():
    t = T()
    t.root()
    t.tables_to_l1()
    for i in range(20):
        t.ch(0x200 + i, 1, leaf(0x6000 + i), NP)
    r = t.replay(max_anomalies=5)
    assert len(r.anomalies) == 5 and r.anomaly_counts["old_spte_mismatch"] == 20


def test_bad_line_raises_or_is_skipped():
    t = T()
    t.root()
    t.lines.append(t.lines[0].replace("l4", "lx"))
    with pytest.raises(TraceParseError) as e:
        t.replay()
    assert e.value.lineno == 2
    r = replay_trace(t.lines, skip_bad=True)
    assert r.parse_stats.bad_lines == 1
    assert [(a.kind, a.lineno) for a in r.anomalies] == [("parse_error", 2)]
    assert "lx" in r.anomalies[0].lines[0].text


def test_stream_input_captures_line_text():
    t = T()
    t.root()
    t.tables_to_l1()
    bad = t.ch(0x201, 1, leaf(0x5001), NP)
    r = replay_trace(iter(t.lines))
    # Zapping a leaf the replayer never saw installed also drives pages_4k below zero.
    assert [x.kind for x in r.anomalies] == ["old_spte_mismatch", "negative_pages"]
    a = r.anomalies[0]
    assert a.lines[0].lineno == bad and a.lines[0].text == t.lines[bad - 1]
    assert "old_spte_mismatch" in str(a)


def test_replay_records_and_to_dict():
    d = Driver()
    d.fault(0x10)
    from tdpsim.trace import parse_trace
    r = replay_records(parse_trace(d.lines()))
    assert r.ok and r.pages == d.kvm.stat.pages
    data = r.to_dict()
    assert data["pages"]["2m"] == 1 and data["anomalies"] == []
    assert data["actors"]["vcpu0"]["faults"] == 1


def test_feed_api_matches_replay_trace():
    d = Driver()
    for g in (0, 0x200, 0x201):
        d.fault(g)
    from tdpsim.trace import parse_trace
    rp = TraceReplayer(ReplayOptions(policy=Policy()))
    for rec in parse_trace(d.lines()):
        rp.feed(rec)
    assert rp.finish().pages == replay_trace(d.lines()).pages == d.kvm.stat.pages
