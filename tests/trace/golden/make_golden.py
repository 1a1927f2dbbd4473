"""Regenerate the golden traces: python tests/trace/golden/make_golden.py (from the repo root).

The files are committed; each starts with comment lines stating what it shows and the
verdict the replayer must reach (``expect: kind@line``, ``expect-pages``, ``expect-counter``,
``options``)."""
from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.trace import records as R
from tdpsim.trace.formats import format_line

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs

NP = DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE
FZ = DEFAULT_PROFILE.FROZEN_SPTE
def leaf(pfn, level, w=True):
    return S.make_spte(EPT, level=level, ad_disabled=False, pte_access=S.ACC_ALL if w else S.ACC_ALL & ~S.ACC_WRITE_MASK,
                       pfn=pfn, old_spte=NP, prefetch=False, host_writable=True,
                       nx_huge_page_enabled=False, mt_mask=(6 << 3) | (1 << 6))
def table(pfn): return S.make_nonleaf_spte(EPT, pfn, False)

class W:
    def __init__(self, path, header):
        self.path, self.out, self.ns = path, [l and "# " + l or "#" for l in header], 1_000_000_000
        self.task = ("CPU 0/KVM", 4100, 0)
    def vmm(self): self.task = ("qemu-system-x86", 4000, 1)
    def vcpu(self, n=0): self.task = (f"CPU {n}/KVM", 4100 + n, n)
    def rec(self, cls, *a, **kw):
        comm, pid, cpu = self.task
        ts = f"{self.ns // 10**9}.{(self.ns // 1000) % 10**6:06d}"; self.ns += 1000
        self.out.append(format_line(cls(*a, comm=comm, pid=pid, cpu=cpu, timestamp=ts, **kw)))
        return len(self.out)
    def root(self, mirror=None):
        if mirror is None:
            return self.rec(R.KvmMmuGetPage, 0, 0, R.make_role(level=4, direct=True, access=7, efer_nx=True, cr0_wp=True) & R.ROLE_KERNEL_MASK, 0, False)
        return self.rec(R.KvmMmuGetPage, 0, 0, R.make_role(level=4, direct=True, access=7, efer_nx=True, cr0_wp=True, is_mirror=mirror), 0, False, style="raw")
    def get(self, gfn, level, mirror=False):
        return self.rec(R.KvmMmuGetPage, 0, gfn, R.make_role(level=level, direct=True, access=7, efer_nx=True), 0, False)
    def zapp(self, gfn, level):
        return self.rec(R.KvmMmuPrepareZapPage, 0, gfn, R.make_role(level=level, direct=True, access=7, efer_nx=True), 0, False)
    def ch(self, gfn, level, old, new):
        return self.rec(R.KvmTdpMmuSpteChanged, 0, gfn, level, old, new)
    def pf(self, gpa, vcpu=0):
        return self.rec(R.KvmPageFault, vcpu, 0xfff0, gpa, 0x182 if True else 0)
    def setspte(self, gfn, spte, level, at):
        return self.rec(R.KvmMmuSetSpte, gfn, spte, level, at, True, bool(spte & 2), S.is_executable_pte(EPT, spte), 1)
    def split(self, gfn, spte, level, errno=0):
        return self.rec(R.KvmMmuSplitHugePage, gfn, spte, level, errno)
    def save(self):
        open(self.path, "w").write("\n".join(self.out) + "\n")

PT = 0x100000  # page-table pfns
def walk_to_l2(w, base_gfn=0x200, mirror=False, gpa_bits=0):
    """fault that maps 4K at base_gfn: links L4->L3->L2->L1 tables."""
    w.vcpu(0)
    w.pf((base_gfn << 12) | gpa_bits)
    w.rec(R.KvmMmuSpteRequested, base_gfn, 0x2000000 + base_gfn, 1)
    w.get(0, 3); w.ch(0, 4, NP, table(PT + 1))
    w.get(0, 2); w.ch(0, 3, NP, table(PT + 2))
    w.get(base_gfn, 1); w.ch(base_gfn, 2, NP, table(PT + 3))
    w.ch(base_gfn, 1, NP, leaf(0x2000000 + base_gfn, 1))
    w.setspte(base_gfn, leaf(0x2000000 + base_gfn, 1), 1, ((PT + 3) << 12) + 0)
    w.pf(((base_gfn + 5) << 12) | gpa_bits)
    w.rec(R.KvmMmuSpteRequested, base_gfn + 5, 0x2000000 + base_gfn + 5, 1)
    w.ch(base_gfn + 5, 1, NP, leaf(0x2000000 + base_gfn + 5, 1))
    w.setspte(base_gfn + 5, leaf(0x2000000 + base_gfn + 5, 1), 1, ((PT + 3) << 12) + 5 * 8)

def promote(w, base_gfn=0x200, gpa_bits=0):
    """a 2M fault over the L1 table (shared lock: all 512 children frozen)."""
    w.pf(((base_gfn + 7) << 12) | gpa_bits)
    w.rec(R.KvmMmuSpteRequested, base_gfn + 7, 0x2000000 + base_gfn + 7, 2)
    huge = leaf(0x2000000 + base_gfn, 2)
    first = w.ch(base_gfn, 2, table(PT + 3), huge)
    w.zapp(base_gfn, 1)
    for i in range(512):
        old = leaf(0x2000000 + base_gfn + i, 1) if i in (0, 5) else NP
        w.ch(base_gfn + i, 1, old, FZ)
    w.setspte(base_gfn, huge, 2, ((PT + 2) << 12) + 1 * 8)
    return first

w = W("tests/trace/golden/good_direct_promotion.txt", [
    "Direct root, NX off: two 4K leaves in the 2M frame at gfn 0x200, then a fault with a",
    "2M goal replaces the table by a huge leaf (reference §9 scenario 1): prepare_zap_page",
    "and 512 children frozen under the shared lock.  No anomaly; pages_4k/2m/1g = 0/1/0.",
    "expect-pages: 0 1 0",
    "expect-counter: promotions=1 tables_removed=1 frozen_children=512",
])
w.vmm(); w.root()
walk_to_l2(w); promote(w); w.save()

w = W("tests/trace/golden/bad_mirror_promotion.txt", [
    "TD: mirror root (raw role word shows is_mirror) and direct root; the same promotion as",
    "good_direct_promotion.txt but on the mirror root (private GPA, no shared bit).  Under",
    "mirror_promotion='disallowed' (SEED patch) the fault path never does this.",
    "expect: mirror_promotion@PROMO",
])
w.vmm(); w.root(True); w.root(False)
walk_to_l2(w); line = promote(w); w.save()
txt = open(w.path).read().replace("@PROMO", f"@{line}"); open(w.path, "w").write(txt)

w = W("tests/trace/golden/bad_old_spte_mismatch.txt", [
    "A 4K leaf is installed, then a zap claims a different old_spte (an injected",
    "inconsistency: the pfn differs).  The replayer flags the zap's line and points at",
    "the line that installed the value it holds.",
    "expect: old_spte_mismatch@ZAP",
])
w.vmm(); w.root()
walk_to_l2(w)
w.vmm()
line = w.ch(0x205, 1, leaf(0x2000999, 1), NP)
w.save()
txt = open(w.path).read().replace("@ZAP", f"@{line}"); open(w.path, "w").write(txt)

w = W("tests/trace/golden/good_split.txt", [
    "A 2M leaf on a direct root is split by eager page splitting (dirty logging enabled):",
    "get_page l1, the leaf becomes a table, kvm_mmu_split_huge_page errno 0 (+512 4K pages,",
    "-1 2M), then the split child at gfn 0x203 is write-protected and another is zapped.",
    "expect-pages: 511 0 0",
    "expect-counter: splits=1 leaf_updates=1 leaf_zaps=1",
])
w.vmm(); w.root(); w.vcpu(0)
w.pf(0x200 << 12)
w.rec(R.KvmMmuSpteRequested, 0x200, 0x2000200, 2)
w.get(0, 3); w.ch(0, 4, NP, table(PT + 1))
w.get(0, 2); w.ch(0, 3, NP, table(PT + 2))
huge = leaf(0x2000200, 2)
w.ch(0x200, 2, NP, huge); w.setspte(0x200, huge, 2, ((PT + 2) << 12) + 8)
w.vmm()
w.get(0x200, 1); w.ch(0x200, 2, huge, table(PT + 3)); w.split(0x200, huge, 2, 0)
c3 = S.make_small_spte(EPT, huge, 1, 3, S.ACC_ALL, False)
w.ch(0x203, 1, c3, c3 & ~S.PT_WRITABLE_MASK)
c7 = S.make_small_spte(EPT, huge, 1, 7, S.ACC_ALL, False)
w.ch(0x207, 1, c7, NP)
w.save()

w = W("tests/trace/golden/bad_zap_leak.txt", [
    "A table is zapped under the write lock (only present children are frozen), but one",
    "of its two present 4K leaves is never frozen: handle_removed_pt would have frozen it.",
    "expect: zap_leak@ZAP",
])
w.vmm(); w.root()
walk_to_l2(w)
w.vmm()
line = w.ch(0x200, 2, table(PT + 3), NP)
w.zapp(0x200, 1)
w.ch(0x200, 1, leaf(0x2000200, 1), FZ)
w.rec(R.KvmMmuGetPage, 0, 0x400, R.make_role(level=1, direct=True, access=7, efer_nx=True), 0, False)
w.save()
txt = open(w.path).read().replace("@ZAP", f"@{line}"); open(w.path, "w").write(txt)

w = W("tests/trace/golden/bad_mirror_level.txt", [
    "UPSTREAM TDX (no HP-v3 huge pages): private memory is 4K only, yet a 2M mirror leaf",
    "is installed.  With the default policy (HP-v3, 2M allowed) the same trace is good.",
    "options: tdx_huge_page=false",
    "expect: level_too_high@LEAF",
])
w.vmm(); w.root(True); w.root(False); w.vcpu(0)
w.pf(0x400 << 12)
w.rec(R.KvmMmuSpteRequested, 0x400, 0x2000400, 2)
w.get(0, 3); w.ch(0, 4, NP, table(PT + 1))
w.get(0, 2); w.ch(0, 3, NP, table(PT + 2))
huge = leaf(0x2000400, 2)
line = w.ch(0x400, 2, NP, huge); w.setspte(0x400, huge, 2, ((PT + 2) << 12) + 2 * 8)
w.save()
txt = open(w.path).read().replace("@LEAF", f"@{line}"); open(w.path, "w").write(txt)
