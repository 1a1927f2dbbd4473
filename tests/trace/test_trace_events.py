"""Hand-written lines in the kernel's exact TP_printk formats (and trace-cmd plugin forms)."""

from __future__ import annotations

import pytest

from tdpsim.trace import (
    CheckMmioSpte,
    FastPageFault,
    HandleMmioPageFault,
    KvmEntry,
    KvmExit,
    KvmMmuGetPage,
    KvmMmuPrepareZapPage,
    KvmMmuSetSpte,
    KvmMmuSplitHugePage,
    KvmMmuSpteRequested,
    KvmMmuSyncPage,
    KvmMmuUnsyncPage,
    KvmMmuZapAllFast,
    KvmPageFault,
    KvmTdpMmuSpteChanged,
    MarkMmioSpte,
    format_line,
    format_record,
    make_role,
    parse_line,
)

FTRACE_HDR = "       CPU 0/KVM-4242    [003] d..1.  1234.567890: "
FTRACE_HDR_NOFLAGS = "       CPU 0/KVM-4242    [003]  1234.567890: "
FTRACE_HDR_TGID = "       CPU 0/KVM-4242    (   4200) [003] d..1.  1234.567890: "
TRACECMD_HDR = " qemu-system-x86-4035  [002]  1733.399493: "
TRACECMD_HDR_LAT = " qemu-system-x86-4035  [002] d..1  1733.399493123: "

# (event, kernel text, expected class, expected event fields)
KERNEL_CASES = [
    ("kvm_page_fault",
     "vcpu 0 rip 0xffffffff81234567 address 0x0000000080001000 error_code 0x182",
     KvmPageFault, dict(vcpu_id=0, guest_rip=0xFFFFFFFF81234567, fault_address=0x80001000,
                        error_code=0x182, style="kernel")),
    ("kvm_page_fault",  # TDX private fault: shared bit clear, error_code 0x2 ... and shared
     "vcpu 3 rip 0x0 address 0x0008000000123000 error_code 0x2",
     KvmPageFault, dict(vcpu_id=3, guest_rip=0, fault_address=0x0008000000123000, error_code=2)),
    ("kvm_page_fault", "vcpu 1 rip 0x401000 address 0x7f001000 error_code 6",
     KvmPageFault, dict(vcpu_id=1, guest_rip=0x401000, fault_address=0x7F001000,
                        error_code=6, style="v2")),
    ("kvm_page_fault", "address 7f001000 error_code 6",
     KvmPageFault, dict(vcpu_id=None, guest_rip=None, fault_address=0x7F001000,
                        error_code=6, style="v1")),
    ("kvm_entry", "vcpu 1, rip 0xffffffff8102ab41",
     KvmEntry, dict(vcpu_id=1, rip=0xFFFFFFFF8102AB41, immediate_exit=False, style="kernel")),
    ("kvm_entry", "vcpu 1, rip 0xfff0[immediate exit]",
     KvmEntry, dict(vcpu_id=1, rip=0xFFF0, immediate_exit=True)),
    ("kvm_exit",
     "vcpu 0 reason EPT_VIOLATION rip 0xffffffff8102ab41 info1 0x0000000000000181 "
     "info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000",
     KvmExit, dict(vcpu_id=0, exit_reason="EPT_VIOLATION", guest_rip=0xFFFFFFFF8102AB41,
                   info1=0x181, info2=0, intr_info=0, error_code=0, style="kernel")),
    ("kvm_exit",
     "vcpu 2 reason TDCALL rip 0x0 info1 0x0000000000000000 info2 0x0000000000000000 "
     "intr_info 0x00000000 error_code 0x00000000",
     KvmExit, dict(vcpu_id=2, exit_reason="TDCALL", guest_rip=0)),
    ("kvm_exit",
     "vcpu 2 reason INVALID_STATE FAILED_VMENTRY rip 0xfff0 info1 0x0000000000000000 "
     "info2 0x0000000000000000 intr_info 0x80000b0e error_code 0x0000000c",
     KvmExit, dict(exit_reason="INVALID_STATE FAILED_VMENTRY", intr_info=0x80000B0E,
                   error_code=0xC)),
    ("kvm_mmu_spte_requested", "gfn 80001 pfn 12345 level 1",
     KvmMmuSpteRequested, dict(gfn=0x80001, pfn=0x12345, level=1)),
    ("kvm_mmu_set_spte", "gfn 1000 spte 80000000000c2b77 (rwxu) level 1 at 10eb9010",
     KvmMmuSetSpte, dict(gfn=0x1000, spte=0x80000000000C2B77, level=1, sptep=0x10EB9010,
                         r=True, w=True, x=True, u=1)),
    ("kvm_mmu_set_spte", "gfn 200 spte 6000001234b5 (r-x-) level 2 at 10eb9800",
     KvmMmuSetSpte, dict(gfn=0x200, spte=0x6000001234B5, level=2, r=True, w=False, x=True, u=0)),
    ("kvm_mmu_set_spte", "gfn 200 spte 6000001234b7 (rw-) level 2 at 10eb9800",
     KvmMmuSetSpte, dict(w=True, x=False, u=-1)),
    ("kvm_tdp_mmu_spte_changed",
     "as id 0 gfn 1000 level 1 old_spte 80000000000005a0 new_spte 600000012345907",
     KvmTdpMmuSpteChanged, dict(as_id=0, gfn=0x1000, level=1, old_spte=0x80000000000005A0,
                                new_spte=0x600000012345907)),
    ("kvm_tdp_mmu_spte_changed",
     "as id 1 gfn 0 level 4 old_spte 0 new_spte 80000000000005a0",
     KvmTdpMmuSpteChanged, dict(as_id=1, gfn=0, level=4, old_spte=0)),
    ("kvm_mmu_split_huge_page", "gfn 200 spte 6000001200ef7 level 2 errno 0",
     KvmMmuSplitHugePage, dict(gfn=0x200, spte=0x6000001200EF7, level=2, errno=0)),
    ("kvm_mmu_split_huge_page", "gfn 200 spte 6000001200ef7 level 2 errno -12",
     KvmMmuSplitHugePage, dict(errno=-12)),
    ("kvm_mmu_get_page",
     "sp gen 0 gfn 0 l4 8-byte q0 direct wux nxe ad root 1 sync new",
     KvmMmuGetPage, dict(mmu_valid_gen=0, gfn=0, root_count=1, unsync=False, created=True,
                         role=make_role(level=4, direct=True, access=7, efer_nx=True))),
    ("kvm_mmu_get_page",
     "sp gen 1 gfn 80200 l1 4-byte q3 --x invalid !nxe !ad root 0 unsync existing",
     KvmMmuGetPage, dict(mmu_valid_gen=1, gfn=0x80200, root_count=0, unsync=True,
                         created=False,
                         role=make_role(level=1, has_4_byte_gpte=True, quadrant=3, access=1,
                                        invalid=True, ad_disabled=True))),
    ("kvm_mmu_prepare_zap_page",
     "sp gen 0 gfn 200 l1 8-byte q0 direct wux nxe ad root 0 sync",
     KvmMmuPrepareZapPage, dict(mmu_valid_gen=0, gfn=0x200,
                                role=make_role(level=1, direct=True, access=7, efer_nx=True))),
    ("kvm_mmu_sync_page", "sp gen 0 gfn 200 l1 8-byte q0 w-- nxe ad root 0 unsync",
     KvmMmuSyncPage, dict(unsync=True)),
    ("kvm_mmu_unsync_page", "sp gen 0 gfn 200 l1 8-byte q0 -u- nxe ad root 0 sync",
     KvmMmuUnsyncPage, dict(unsync=False)),
    ("fast_page_fault",
     "vcpu 0 gva 7f001000 error_code P|W sptep 00000000c2b3a5f1 old 0x600000012345905 "
     "new 600000012345907 spurious 0 fixed 1",
     FastPageFault, dict(vcpu_id=0, cr2_or_gpa=0x7F001000, error_code=3, sptep=0xC2B3A5F1,
                         old_spte=0x600000012345905, new_spte=0x600000012345907,
                         spurious=False, fixed=True)),
    ("fast_page_fault",
     "vcpu 1 gva 1000 error_code  sptep 0000000000000000 old 0x0 new 0 spurious 1 fixed 0",
     FastPageFault, dict(error_code=0, sptep=0, old_spte=0, spurious=True, fixed=False)),
    ("fast_page_fault",
     "vcpu 1 gva 1000 error_code W|U|RSVD|F|0x100000 sptep 0000000000000000 old 0x0 new 0 "
     "spurious 0 fixed 0",
     FastPageFault, dict(error_code=0x10001E)),
    ("mark_mmio_spte", "sptep:000000005e0a4b11 gfn fee00 access 6 gen 1a",
     MarkMmioSpte, dict(sptep=0x5E0A4B11, gfn=0xFEE00, access=6, gen=0x1A)),
    ("handle_mmio_page_fault", "addr:fee00000 gfn fee00 access 6",
     HandleMmioPageFault, dict(addr=0xFEE00000, gfn=0xFEE00, access=6)),
    ("check_mmio_spte", "spte 8000000fee00b76 kvm_gen 1a spte-gen 1a valid 1",
     CheckMmioSpte, dict(spte=0x8000000FEE00B76, kvm_gen=0x1A, spte_gen=0x1A)),
    ("check_mmio_spte", "spte 8000000fee00b76 kvm_gen 1c spte-gen 1a valid 0",
     CheckMmioSpte, dict(kvm_gen=0x1C, spte_gen=0x1A)),
    ("kvm_mmu_zap_all_fast", "kvm-mmu-valid-gen 1 used_pages 2a",
     KvmMmuZapAllFast, dict(mmu_valid_gen=1, mmu_used_pages=0x2A)),
]

# trace-cmd report (libtraceevent plugin_kvm) spellings: (event, text, class, fields)
PLUGIN_CASES = [
    ("kvm_exit", "reason EPT_VIOLATION rip 0xffffffff8102ab41 info 181 0",
     KvmExit, dict(vcpu_id=None, exit_reason="EPT_VIOLATION", guest_rip=0xFFFFFFFF8102AB41,
                   info1=0x181, info2=0, intr_info=None, error_code=None, style="plugin")),
    ("kvm_exit", "reason UNKNOWN (77) rip 0x0 info 0 0",
     KvmExit, dict(exit_reason="UNKNOWN (77)", style="plugin")),
    ("kvm_exit", "reason HLT rip 0xffffffff81e0c8aa native_safe_halt+0xa info 0 0",
     KvmExit, dict(exit_reason="HLT", rip_sym="native_safe_halt+0xa")),
    ("kvm_entry", " vcpu 1 rip 0xffffffff8102ab41",
     KvmEntry, dict(vcpu_id=1, rip=0xFFFFFFFF8102AB41, style="plugin", rip_sym=None)),
    ("kvm_mmu_get_page", "new sp gfn 80200 1 q0 direct wux !pae nxe wp root 0 sync",
     KvmMmuGetPage, dict(mmu_valid_gen=None, gfn=0x80200, created=True, style="plugin",
                         role=make_role(level=1, direct=True, access=7, efer_nx=True,
                                        cr0_wp=True))),
    ("kvm_mmu_prepare_zap_page", "4 q0 direct wux !pae nxe wp smm root 1 unsync",
     KvmMmuPrepareZapPage, dict(mmu_valid_gen=None, gfn=None, unsync=True, root_count=1,
                                role=make_role(level=4, direct=True, access=7, efer_nx=True,
                                               cr0_wp=True, smm=1))),
    ("kvm_mmu_get_page",
     "[FAILED TO PARSE] mmu_valid_gen=0 gfn=524800 role=528257 root_count=0 unsync=0 created=1",
     KvmMmuGetPage, dict(mmu_valid_gen=0, gfn=524800, role=528257, style="raw", created=True)),
]


def _check(rec, cls, fields):
    assert type(rec) is cls
    for k, v in fields.items():
        assert getattr(rec, k) == v, (k, getattr(rec, k), v)


@pytest.mark.parametrize("event,text,cls,fields", KERNEL_CASES)
@pytest.mark.parametrize("hdr", [FTRACE_HDR, FTRACE_HDR_NOFLAGS, FTRACE_HDR_TGID, TRACECMD_HDR,
                                 TRACECMD_HDR_LAT])
def test_kernel_format_lines(hdr, event, text, cls, fields):
    rec = parse_line(f"{hdr}{event}: {text}\n")
    _check(rec, cls, fields)
    # the formatter reproduces the kernel's text exactly
    assert format_record(rec) == text
    assert parse_line(format_line(rec)) == rec
    assert parse_line(format_line(rec, style="ftrace")) == rec


@pytest.mark.parametrize("event,text,cls,fields", PLUGIN_CASES)
def test_trace_cmd_plugin_lines(event, text, cls, fields):
    # trace-cmd pads the event name; the plugin's page printer ends with a NUL
    line = f"{TRACECMD_HDR}{event}:{' ' * (22 - len(event))}{text}\x00\n"
    rec = parse_line(line)
    _check(rec, cls, fields)
    assert format_record(rec) == text
    assert parse_line(format_line(rec)) == rec


def test_header_fields():
    rec = parse_line(FTRACE_HDR_TGID + "kvm_mmu_spte_requested: gfn 1 pfn 2 level 3")
    assert (rec.comm, rec.pid, rec.tgid, rec.cpu, rec.flags, rec.timestamp) == (
        "CPU 0/KVM", 4242, 4200, 3, "d..1.", "1234.567890")
    assert rec.timestamp_ns == 1234_567_890_000
    rec = parse_line(TRACECMD_HDR_LAT + "kvm_mmu_spte_requested: gfn 1 pfn 2 level 3")
    assert (rec.comm, rec.pid, rec.tgid, rec.cpu, rec.flags) == ("qemu-system-x86", 4035, None, 2, "d..1")
    assert rec.timestamp == "1733.399493123" and rec.timestamp_ns == 1733_399_493_123
    rec = parse_line("          <...>-77      (-------) [000] .... 5.000001: kvm_mmu_spte_requested: gfn 1 pfn 2 level 3")
    assert (rec.comm, rec.pid, rec.tgid) == ("<...>", 77, -1)
    rec = parse_line("  kworker/u16:3-events-90 [001] 12: kvm_mmu_spte_requested: gfn 1 pfn 2 level 3")
    assert (rec.comm, rec.pid, rec.timestamp, rec.timestamp_ns) == ("kworker/u16:3-events", 90, "12", 12)


def test_page_role_decoding():
    rec = parse_line(FTRACE_HDR + "kvm_mmu_get_page: sp gen 0 gfn 0 l4 8-byte q0 direct wux nxe !ad root 1 sync new")
    assert rec.level == 4 and rec.direct and rec.access == 7 and rec.access_str == "wux"
    assert rec.nxe and not rec.ad and rec.ad_disabled and not rec.invalid and rec.gpte_bytes == 8
    assert rec.gen == 0 and rec.created and not rec.is_mirror
    raw = parse_line(TRACECMD_HDR + "kvm_mmu_get_page: [FAILED TO PARSE] mmu_valid_gen=0 gfn=0 "
                     f"role={make_role(level=4, direct=True, access=7, is_mirror=True)} "
                     "root_count=1 unsync=0 created=1")
    assert raw.is_mirror and raw.level == 4 and raw.known_role_mask == 0xFFFFFFFF


def test_kvm_exit_reason_code():
    rec = parse_line(TRACECMD_HDR + "kvm_exit: reason UNKNOWN (77) rip 0x0 info 0 0")
    assert rec.exit_reason_code == 77
    rec = parse_line(FTRACE_HDR + "kvm_exit: vcpu 0 reason EPT_VIOLATION rip 0x0 info1 "
                     "0x0000000000000181 info2 0x0000000000000000 intr_info 0x00000000 "
                     "error_code 0x00000000")
    assert rec.exit_reason_code == 48


def test_pointer_spellings_from_trace_cmd():
    # libtraceevent prints %p as 0x... / (nil) and %#llx of 0 as 0
    rec = parse_line(TRACECMD_HDR + "fast_page_fault: vcpu 0 gva 1000 error_code W sptep "
                     "0xffff888102345678 old 0 new 1 spurious 0 fixed 1")
    assert rec.sptep == 0xFFFF888102345678 and rec.old_spte == 0
    rec = parse_line(TRACECMD_HDR + "mark_mmio_spte: sptep:(nil) gfn 1 access 0 gen 0")
    assert rec.sptep == 0


def test_non_events_return_none():
    assert parse_line("# tracer: nop") is None
    assert parse_line("") is None
    assert parse_line("cpus=8") is None
    assert parse_line("          <idle>-0       [001] d..2.  1000.000001: sched_switch: prev_comm=swapper/1") is None
    # an event of another system that merely shares a prefix
    assert parse_line(FTRACE_HDR + "kvm_mmu_set_spte_foo: gfn 1") is None
