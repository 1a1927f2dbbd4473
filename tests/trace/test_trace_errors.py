"""Errors, statistics, sources and streaming behaviour of the parser."""

from __future__ import annotations

import io

import pytest

from tdpsim.trace import (
    KvmMmuSetSpte,
    KvmTdpMmuSpteChanged,
    TraceParseError,
    TraceParser,
    TraceStats,
    parse_trace,
)

GOOD = "       CPU 0/KVM-4242    [003] d..1.  1234.567890: kvm_mmu_set_spte: gfn 1000 spte 80000000000c2b77 (rwxu) level 1 at 10eb9010\n"
OTHER = "          <idle>-0       [001] d..2.  1000.000001: sched_switch: prev_comm=swapper/1 prev_pid=0\n"
HEADER = """# tracer: nop
#
# entries-in-buffer/entries-written: 5/5   #P:8
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""
CHANGED = "       CPU 1/KVM-4243    [001] ....  1234.567891: kvm_tdp_mmu_spte_changed: as id 0 gfn 1000 level 1 old_spte 80000000000005a0 new_spte 600000012345907\n"

BAD_CASES = [
    (GOOD.replace("at 10eb9010", "at 10eb901g"), "sptep"),
    (GOOD.replace("gfn 1000", "gfn 1000x"), "gfn"),
    (GOOD.replace("level 1", "level 256"), "level"),
    (GOOD.replace("(rwxu)", "(r-xu)"), "w"),             # w disagrees with spte bit 1
    (GOOD.replace("(rwxu)", "(rwx?)"), "u"),
    (GOOD.replace("spte 80000000000c2b77", "spte 180000000000c2b77"), "spte"),  # > 64 bits
    (GOOD.replace("spte ", "sptex "), "spte"),
    (GOOD.rstrip("\n") + " extra\n", "sptep"),
    (GOOD.replace("[003]", "[0x3]"), "header"),
    (CHANGED.replace("as id 0", "as id -1"), "as_id"),
    (CHANGED.replace("new_spte 600000012345907", "new_spte"), "new_spte"),
    ("       CPU 0/KVM-4242    [003] d..1.  1234.567890: kvm_exit: vcpu 0 reason EPT_VIOLATION "
     "rip 0x0 info1 0x181 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000\n", "info1"),
    ("       CPU 0/KVM-4242    [003] d..1.  1234.567890: kvm_mmu_get_page: sp gen 0 gfn 0 l4 "
     "8-byte q0 direct wux nxe ad root 1 sync brand-new\n", "created"),
    ("       CPU 0/KVM-4242    [003] d..1.  1234.567890: fast_page_fault: vcpu 0 gva 1000 "
     "error_code W|P sptep 0 old 0x0 new 0 spurious 0 fixed 0\n", "error_code"),  # not canonical
    ("       CPU 0/KVM-4242    [003] d..1.  1234.567890: check_mmio_spte: spte 1 kvm_gen 1 "
     "spte-gen 2 valid 1\n", "valid"),
    ("       CPU 0/KVM-4242    [003] d..1.  1234.567890: kvm_mmu_split_huge_page: gfn 0 spte 0 "
     "level 2 errno 2147483648\n", "errno"),
]


@pytest.mark.parametrize("bad,field", BAD_CASES)
def test_error_names_file_line_and_field(tmp_path, bad, field):
    path = tmp_path / "trace.txt"
    path.write_text(HEADER + GOOD + OTHER + bad + GOOD)
    lineno = HEADER.count("\n") + 3
    with pytest.raises(TraceParseError) as ei:
        list(TraceParser(path))
    err = ei.value
    assert err.filename == str(path)
    assert err.lineno == lineno
    assert err.line == bad.rstrip("\n")
    assert err.field == field
    msg = str(err)
    assert f"{path}:{lineno}:" in msg and f"'{field}'" in msg and bad.strip()[:40] in msg


def test_records_before_the_error_are_yielded():
    bad = GOOD.replace("level 1", "level x")
    it = iter(TraceParser([GOOD, bad, GOOD], filename="t"))
    assert isinstance(next(it), KvmMmuSetSpte)
    with pytest.raises(TraceParseError) as ei:
        next(it)
    assert ei.value.lineno == 2 and ei.value.filename == "t" and ei.value.field == "level"


def test_skip_bad_counts_and_keeps_examples():
    bad = [c for c, _ in BAD_CASES]
    lines = [GOOD, *bad, OTHER, "# comment\n", "\n", CHANGED, "CPU:2 [LOST 17 EVENTS]\n"]
    p = TraceParser(lines, skip_bad=True, max_bad_examples=4, filename="x.txt")
    out = list(p)
    assert [type(r) for r in out] == [KvmMmuSetSpte, KvmTdpMmuSpteChanged]
    s = p.stats
    assert s.lines == len(lines)
    assert s.bad_lines == len(bad)
    assert len(s.bad_examples) == 4
    assert [(b.lineno, b.field) for b in s.bad_examples] == [
        (i + 2, f) for i, (_, f) in enumerate(BAD_CASES[:4])]
    assert s.bad_examples[0].filename == "x.txt"
    assert s.skipped_other == 1
    assert s.skipped_comments == 3
    assert s.lost_events == 17
    assert s.events == {"kvm_mmu_set_spte": 1, "kvm_tdp_mmu_spte_changed": 1}
    assert s.parsed == 2


def test_sources_path_textio_bytes_and_stats(tmp_path):
    text = HEADER + GOOD + OTHER + CHANGED + GOOD
    path = tmp_path / "t.txt"
    path.write_text(text)
    expect = list(TraceParser(text.splitlines(keepends=True)))
    assert len(expect) == 3
    assert list(TraceParser(str(path))) == expect
    assert list(TraceParser(io.StringIO(text))) == expect
    assert list(TraceParser(io.BytesIO(text.encode()))) == expect
    with open(path, "rb") as f:
        assert list(TraceParser(f)) == expect
    stats = TraceStats()
    assert list(parse_trace(path, stats=stats)) == expect
    assert stats.events == {"kvm_mmu_set_spte": 2, "kvm_tdp_mmu_spte_changed": 1}
    assert stats.skipped_comments == HEADER.count("\n") and stats.skipped_other == 1
    # CRLF line endings
    assert list(TraceParser(io.StringIO(text.replace("\n", "\r\n"), newline=""))) == expect


def test_event_filter():
    p = TraceParser([GOOD, CHANGED], events=["kvm_tdp_mmu_spte_changed"])
    assert [type(r) for r in p] == [KvmTdpMmuSpteChanged]
    assert p.stats.skipped_other == 1
    with pytest.raises(ValueError):
        TraceParser([], events=["nope"])


def test_streaming_is_lazy():
    """The parser pulls lines one at a time: it never reads ahead of what it yields."""
    pulled = 0

    def source():
        nonlocal pulled
        for _ in range(1_000_000):
            pulled += 1
            yield GOOD

    it = iter(TraceParser(source()))
    for _ in range(10):
        next(it)
    assert pulled == 10


def test_multiple_vms_and_cpus():
    lines = []
    for vm, pid in enumerate((1000, 2000, 3000)):
        for cpu in range(4):
            lines.append(GOOD.replace("CPU 0/KVM-4242", f"CPU {cpu}/KVM-{pid + cpu}")
                         .replace("[003]", f"[{cpu + 4 * vm:03d}]"))
    recs = list(TraceParser(lines))
    assert {(r.pid, r.cpu) for r in recs} == {(p + c, c + 4 * v) for v, p in enumerate((1000, 2000, 3000)) for c in range(4)}
    assert {r.comm for r in recs} == {f"CPU {c}/KVM" for c in range(4)}
