"""Hypothesis stateful test: random valid/invalid SEAMCALL/TDCALL sequences keep the module
consistent (child counts, PAMT, per-level states, no lock left held, failed calls change
nothing in the S-EPT)."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tdpsim.model.tdx_module import TdxModule, sept_leaves
from tdpsim.model.tdx_module import status as S

GFNS = 1024  # two 2M regions
SEPT_PFNS = st.integers(0x100, 0x10F)
GUEST_PFNS = st.integers(0x10000, 0x10000 + GFNS - 1)
LEVELS = st.integers(0, 3)
VCPUS = st.integers(0, 1)
STATUS_OK = {S.TDX_SUCCESS}


def gpa_at(gfn: int, level: int) -> int:
    return (gfn << 12) & ~((1 << (12 + 9 * level)) - 1)


class TdxModuleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = TdxModule(op_state=1, version="1.5")
        # Pre-build PML4E and PDPTE so that random calls reach the interesting levels.
        assert self.m.tdh_mem_sept_add(0, 3, 0x80).ok
        assert self.m.tdh_mem_sept_add(0, 2, 0x81).ok

    def _snapshot(self):
        return list(sept_leaves(self.m))

    def _seamcall(self, fn, *args, **kw):
        before = self._snapshot()
        r = fn(*args, **kw)
        assert r.status & S.DETAIL_MASK == r.status & 0xFFFFFFFF
        if r.status != S.TDX_SUCCESS:
            assert self._snapshot() == before, r.name
        return r

    @rule(gfn=st.integers(0, GFNS - 1), level=st.integers(1, 3), pfn=SEPT_PFNS)
    def sept_add(self, gfn, level, pfn):
        self._seamcall(self.m.tdh_mem_sept_add, gpa_at(gfn, level), level, pfn)

    @rule(gfn=st.integers(0, GFNS - 1), level=st.integers(0, 1), pfn=GUEST_PFNS)
    def aug(self, gfn, level, pfn):
        self._seamcall(self.m.tdh_mem_page_aug, gpa_at(gfn, level), level,
                       pfn & ~511 if level else pfn)

    @rule(region=st.integers(0, 1), accept=st.booleans())
    def fill_region(self, region, accept):
        """AUG 512 contiguous 4K pages of one 2M region (the PROMOTE precondition)."""
        base = region << 21
        self._seamcall(self.m.tdh_mem_sept_add, base, 1, 0x90 + region)
        for i in range(512):
            self.m.tdh_mem_page_aug(base + (i << 12), 0, 0x20000 + (region << 9) + i)
        v = self.m.vcpus.get(0)
        if accept and v is not None and v.in_guest:
            for i in range(512):
                self.m.tdg_mem_page_accept(0, base + (i << 12), 0)
                if not v.in_guest:
                    break

    @rule(gfn=st.integers(0, GFNS - 1), pfn=GUEST_PFNS)
    def page_add(self, gfn, pfn):
        self._seamcall(self.m.tdh_mem_page_add, gpa_at(gfn, 0), pfn)

    @rule(gfn=st.integers(0, GFNS - 1), level=LEVELS)
    def block(self, gfn, level):
        self._seamcall(self.m.tdh_mem_range_block, gpa_at(gfn, level), level)

    @rule(gfn=st.integers(0, GFNS - 1), level=LEVELS)
    def unblock(self, gfn, level):
        self._seamcall(self.m.tdh_mem_range_unblock, gpa_at(gfn, level), level)

    @rule()
    def track(self):
        self._seamcall(self.m.tdh_mem_track)

    @rule(gfn=st.integers(0, GFNS - 1), level=st.integers(0, 2))
    def remove(self, gfn, level):
        r = self._seamcall(self.m.tdh_mem_page_remove, gpa_at(gfn, level), level)
        if r.ok:
            for p in range(r.rcx >> 12, (r.rcx >> 12) + (1 << (9 * level))):
                assert self.m.tdh_phymem_page_wbinvd(p).ok

    @rule(gfn=st.integers(0, GFNS - 1), level=st.integers(1, 3))
    def sept_remove(self, gfn, level):
        self._seamcall(self.m.tdh_mem_sept_remove, gpa_at(gfn, level), level)

    @rule(gfn=st.integers(0, GFNS - 1), level=st.integers(1, 2), pfn=SEPT_PFNS,
          intr=st.booleans())
    def demote(self, gfn, level, pfn, intr):
        self._seamcall(self.m.tdh_mem_page_demote, gpa_at(gfn, level), level, pfn,
                       interrupt_pending=intr)

    @rule(gfn=st.integers(0, GFNS - 1), level=st.integers(1, 2))
    def promote(self, gfn, level):
        self._seamcall(self.m.tdh_mem_page_promote, gpa_at(gfn, level), level)

    @rule()
    def finalize(self):
        self._seamcall(self.m.tdh_mr_finalize)

    @rule(vcpu=VCPUS)
    def enter_or_exit(self, vcpu):
        v = self.m.vcpus.get(vcpu)
        if v is not None and v.in_guest:
            self.m.td_exit(vcpu)
        else:
            self.m.tdh_vp_enter(vcpu)

    @rule(vcpu=VCPUS, gfn=st.integers(0, GFNS - 1), level=st.integers(0, 2),
          intr=st.one_of(st.none(), st.integers(1, 600)))
    def accept(self, vcpu, gfn, level, intr):
        v = self.m.vcpus.get(vcpu)
        if v is None or not v.in_guest:
            return
        r = self.m.tdg_mem_page_accept(vcpu, gpa_at(gfn, level), level, interrupt_after=intr)
        assert (r.status is None) == (r.exit is not None)

    @rule(vcpu=VCPUS, gfn=st.integers(0, GFNS - 1))
    def access(self, vcpu, gfn):
        v = self.m.vcpus.get(vcpu)
        if v is not None and v.in_guest:
            self.m.guest_access(vcpu, gfn << 12)

    @invariant()
    def consistent(self):
        assert self.m.violations() == []


TdxModuleMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50,
                                              deadline=None)
test_tdx_module_stateful = TdxModuleMachine.TestCase
