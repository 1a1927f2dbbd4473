"""The TDX module behind the SEAMCALL boundary, for one TD: S-EPT SEAMCALLs, TRACK, VP.ENTER.

Mirrors, of intel/tdx-module 1.5.01 (commit 72d8cffb): ``src/vmm_dispatcher/api_calls/
tdh_mem_{sept_add,page_add,page_aug,range_block,range_unblock,track,page_remove,sept_remove,
page_demote,page_promote}.c``, ``tdh_phymem_page_{wbinvd,reclaim}.c``, ``tdh_mr_finalize.c``,
``tdh_mng_{init,vpflushdone,key_freeid}.c``, ``src/td_transitions/{tdh_vp_enter.c,td_exit.c,
td_exit_stepping.c}``, ``src/td_dispatcher/vm_exits/{tdg_mem_page_accept.c,td_ept_violation.c}``
and the common prologue in ``src/common/helpers/helpers.c``.

Simplifications:
- One ``TdxModule`` per TD; the TDR/TDCS are Python attributes, the TDR PA is not an input.
- Inputs are (gpa, TDX level, pfn); the page_info reserved-bit checks reduce to level range,
  alignment and "private GPA below the shared bit".
- No modelled leaf takes OP_STATE exclusive (only migration leaves do), so BUSY|OP_STATE
  cannot arise; the shared acquisition is still modelled.
- PAGE.ADD's source page, MR.EXTEND, RELOCATE, migration, L2 VMs and TDX Connect are absent.
- VP.ENTER models only the epoch/TLB/zero-step part; a vCPU's TLB caches every translation it
  used until an epoch flush (worst case, unbounded capacity).
- Zero-step: 6 private EPT violations at the same RIP arm the filter (RIP must be supplied);
  the filter treats MAPPED and PENDING leaves as "no longer faulting" [inferred].
- NON-BLOCKING-RESIZE (unverified feature, no source): DEMOTE/PROMOTE of an unblocked entry skip
  the BLOCK/TRACK requirement.
- DPAMT: a 2M range needs PAMT.ADD before any 4K page in it is used; DEMOTE of a 2M guest page
  needs the pair (``pamt_pfns``) unless the range is already backed.
- Error RCX details: the architectural entry is rebuilt from the state (see ``sept.arch_entry``).

Digest notes (checked against the source):
- UNBLOCK's TLB_TRACKING_NOT_DONE detail is SEPT_TREE (0x92) in 1.5.x but RCX in the 2.0
  source; ``version`` selects which one (the digest gives only the 1.5 value).
- ACCEPT locks the target entry *before* classifying it, so a host-locked MAPPED entry gives
  BUSY rather than ALREADY_ACCEPTED (digest table lists BUSY last).
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Hashable, Iterator

from tdpsim.model import sched as _sched
from tdpsim.model.sched import SchedPoints

from . import sept as S
from .locks import CallCtx, SharexLock
from .pamt import PT_EPT, PT_NDA, PT_REG, PT_RSVD, Pamt
from .results import (
    EEQ_TYPE_ACCEPT, EEQ_TYPE_NONE, EEQ_TYPE_PENDING_EPT_VIOLATION, EptViolationExit,
    GuestAccess, TdcallResult, TdxResult, make_eeq,
)
from .sept import SeptEntryInfo, SeptPage, Walk
from .status import (
    TDX_EPT_ENTRY_STATE_INCORRECT, TDX_EPT_INVALID_PROMOTE_CONDITIONS, TDX_EPT_PAGE_NOT_FREE,
    TDX_EPT_WALK_FAILED, TDX_FLUSHVP_NOT_DONE, TDX_GPA_RANGE_ALREADY_BLOCKED,
    TDX_GPA_RANGE_NOT_BLOCKED, TDX_HPA_RANGE_NOT_FREE, TDX_INTERRUPTED_RESTARTABLE, TDX_LIFECYCLE_STATE_INCORRECT,
    TDX_MISSING_PAMT_PAGE_PAIR, TDX_OP_STATE_INCORRECT, TDX_OPERAND_BUSY,
    TDX_OPERAND_ID_OP_STATE, TDX_OPERAND_ID_R8, TDX_OPERAND_ID_RCX, TDX_OPERAND_ID_RDX,
    TDX_OPERAND_ID_SEPT, TDX_OPERAND_ID_TD_EPOCH, TDX_OPERAND_INVALID,
    TDX_PAGE_ALREADY_ACCEPTED, TDX_PAGE_METADATA_INCORRECT, TDX_PAGE_SIZE_MISMATCH,
    TDX_PREVIOUS_TLB_EPOCH_BUSY, TDX_SUCCESS, TDX_TD_FATAL, TDX_TD_KEYS_NOT_CONFIGURED,
    TDX_TLB_TRACKING_NOT_DONE, with_operand,
)

# --- TD op-states (TDCS.OP_STATE) and lifecycle states (TDR) ---------------------------------
OP_UNINITIALIZED: Final = 0
OP_INITIALIZED: Final = 1
OP_RUNNABLE: Final = 2
TD_KEYS_CONFIGURED: Final = 1
TD_BLOCKED: Final = 2
TD_TEARDOWN: Final = 3

# --- leaf numbers ---
TDH_VP_ENTER: Final = 0
TDH_MEM_PAGE_ADD: Final = 2
TDH_MEM_SEPT_ADD: Final = 3
TDH_MEM_PAGE_AUG: Final = 6
TDH_MEM_RANGE_BLOCK: Final = 7
TDH_MEM_PAGE_DEMOTE: Final = 15
TDH_MR_FINALIZE: Final = 17
TDH_MNG_KEY_FREEID: Final = 20
TDH_MNG_INIT: Final = 21
TDH_MEM_PAGE_PROMOTE: Final = 23
TDH_MNG_VPFLUSHDONE: Final = 24
TDH_PHYMEM_PAGE_RECLAIM: Final = 28
TDH_MEM_PAGE_REMOVE: Final = 29
TDH_MEM_SEPT_REMOVE: Final = 30
TDH_MEM_TRACK: Final = 38
TDH_MEM_RANGE_UNBLOCK: Final = 39
TDH_PHYMEM_PAGE_WBINVD: Final = 41
TDH_PHYMEM_PAMT_ADD: Final = 58
TDH_PHYMEM_PAMT_REMOVE: Final = 59
TDG_MEM_PAGE_ACCEPT: Final = 6  # TDCALL leaf

_RUN = frozenset({OP_INITIALIZED, OP_RUNNABLE})
# §2.2 op-state gating (op_state_lookup.c), for the leaves this model implements.
OP_STATE_ALLOWED: dict[str, frozenset[int]] = {
    "TDH.VP.ENTER": frozenset({OP_RUNNABLE}),
    "TDH.MEM.PAGE.ADD": frozenset({OP_INITIALIZED}),
    "TDH.MR.FINALIZE": frozenset({OP_INITIALIZED}),
    "TDH.MEM.SEPT.ADD": _RUN, "TDH.MEM.PAGE.AUG": _RUN, "TDH.MEM.RANGE.BLOCK": _RUN,
    "TDH.MEM.PAGE.DEMOTE": _RUN, "TDH.MEM.PAGE.PROMOTE": _RUN, "TDH.MEM.PAGE.REMOVE": _RUN,
    "TDH.MEM.SEPT.REMOVE": _RUN, "TDH.MEM.TRACK": _RUN, "TDH.MEM.RANGE.UNBLOCK": _RUN,
}

# TDX_FEATURES0 bits.
FEATURE_NO_RBP_MOD: Final = 1 << 18
FEATURE_CLFLUSH_BEFORE_ALLOC: Final = 1 << 23
FEATURE_DYNAMIC_PAMT: Final = 1 << 36
FEATURE_UPDATE_COMPATIBILITY: Final = 1 << 47
FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY: Final = 1 << 51

STEPPING_EPF_THRESHOLD: Final = 6

# Scheduling-point keys (see sched.py): module-wide resources.
KEY_SEPT_TREE = ("tdx", "sept_tree")
KEY_EPOCH = ("tdx", "epoch")
KEY_OP_STATE = ("tdx", "op_state")
KEY_PAMT = ("tdx", "pamt")
KEY_LIFECYCLE = ("tdx", "lifecycle")

_BUSY_RCX = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_RCX)
_BUSY_RDX = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_RDX)
_BUSY_R8 = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_R8)
_BUSY_SEPT = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT)
_BUSY_EPOCH = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_TD_EPOCH)
_BUSY_OP_STATE = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_OP_STATE)
_INVALID_RCX = with_operand(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX)
_INVALID_R8 = with_operand(TDX_OPERAND_INVALID, TDX_OPERAND_ID_R8)
_WALK_FAILED_RCX = with_operand(TDX_EPT_WALK_FAILED, TDX_OPERAND_ID_RCX)
_STATE_INCORRECT_RCX = with_operand(TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX)
_NOT_BLOCKED_RCX = with_operand(TDX_GPA_RANGE_NOT_BLOCKED, TDX_OPERAND_ID_RCX)
_NOT_TRACKED_RCX = with_operand(TDX_TLB_TRACKING_NOT_DONE, TDX_OPERAND_ID_RCX)
_METADATA_R8 = with_operand(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_R8)
_METADATA_RCX = with_operand(TDX_PAGE_METADATA_INCORRECT, TDX_OPERAND_ID_RCX)

_OK = TdxResult(TDX_SUCCESS)


class Vcpu:
    """TDVPS fields the model needs: VCPU_EPOCH, in-guest, LP association, TLB."""

    __slots__ = ("vcpu_id", "epoch", "in_guest", "associated", "tlb", "flushes",
                 "last_rip", "same_rip_faults", "stepping_gpas")

    def __init__(self, vcpu_id: int) -> None:
        self.vcpu_id = vcpu_id
        self.epoch = 0
        self.in_guest = False
        self.associated = False
        self.tlb: dict[int, int] = {}  # gfn -> pfn of 4K translations cached since last flush
        self.flushes = 0
        self.last_rip: int | None = None
        self.same_rip_faults = 0
        self.stepping_gpas: set[int] = set()


class TdxModule:
    """One TD as the TDX module sees it.  Every SEAMCALL is a method named after its kernel
    wrapper; each returns ``TdxResult`` (status, rcx, rdx, r8)."""

    # The per-call lock context; the explorer swaps in one that reports lock footprints.
    call_ctx = CallCtx

    def __init__(
        self,
        sched: SchedPoints | None = None,
        *,
        version: str = "1.5",
        features: int = FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY,
        non_blocking_resize: bool = False,
        dpamt: bool = False,
        pwl: int = 3,
        gpaw: int = 48,
        sept_ve_disable: bool = True,
        op_state: int = OP_INITIALIZED,
        td_id: int = 1,
        root_pfn: int | None = None,
        pamt: Pamt | None = None,
        fine_grained_keys: bool = False,
    ) -> None:
        if version not in ("1.5", "2.0"):
            raise ValueError(f"unknown module version {version!r}")
        if pwl not in (3, 4):
            raise ValueError("pwl must be 3 (4-level EPT) or 4 (5-level EPT)")
        self.sched = sched if sched is not None else SchedPoints()
        self.version = version
        self.features = features | (FEATURE_DYNAMIC_PAMT if dpamt else 0)
        self.non_blocking_resize = non_blocking_resize
        self.dpamt = dpamt
        self.pwl = pwl
        self.gpaw = gpaw
        self.sept_ve_disable = sept_ve_disable
        self.op_state = op_state
        self.lifecycle = TD_KEYS_CONFIGURED
        self.fatal = False
        self.td_id = td_id
        self.pamt = pamt if pamt is not None else Pamt()
        self.fine_grained_keys = fine_grained_keys
        # The root S-EPT page is a TDCS page in 1.5 (not tracked in the PAMT here).
        self.root = SeptPage(pwl, 0, -1 if root_pfn is None else root_pfn)
        # TDCS epoch tracking; TD_EPOCH starts at 1 so that BEPOCH 0 is never "current".
        self.td_epoch = 1
        self.refcount = [0, 0]
        self.child_count = 0  # TDR.CHLDCNT: 4K units of TD pages + S-EPT pages
        self.vcpus: dict[int, Vcpu] = {}
        self.mrtd_log: list[int] = []  # GPAs measured by PAGE.ADD, in order
        self.unflushed: set[int] = set()  # 4K pfns removed but not yet WBINVDed
        # Locks (§2.3).
        self.tdr_lock = SharexLock("tdr")
        self.op_state_lock = SharexLock("op_state")
        self.sept_lock = SharexLock("sept_tree")
        self.epoch_lock = SharexLock("td_epoch")
        # Counters read by metrics.
        self.seamcalls: Counter[str] = Counter()
        self.results: Counter[tuple[str, str]] = Counter()
        self.track_count = 0
        self.tlb_flush_count = 0
        self.pages_zeroed = 0

    # =============================================================================== plumbing
    def _call(self, leaf: str, body, *args, kind: str = _sched.SEAMCALL,
              key: Hashable = KEY_SEPT_TREE, write: bool = True):
        """Run a handler inside a lock/scheduling context and count its result."""
        c = self.call_ctx(self.sched, kind, key, write)
        try:
            res = body(c, *args)
        finally:
            c.close()
        self.seamcalls[leaf] += 1
        self.results[(leaf, res.name)] += 1
        return res

    def _entry_key(self, gpa: int, level: int) -> Hashable:
        if self.fine_grained_keys:
            return ("sept", level, gpa >> 12)
        return KEY_SEPT_TREE

    def _prologue(self, c: CallCtx, leaf: str, tdr_excl: bool = False, op_lock: bool = True,
                  op_excl: bool = False, tdr_busy: int = _BUSY_RDX) -> int:
        """§2.1 steps 1-4: TDR lock, TD build state, OP_STATE lock, op-state gating."""
        if not c.lock(self.tdr_lock, tdr_excl):
            return tdr_busy
        if self.fatal:
            return TDX_TD_FATAL
        if self.lifecycle != TD_KEYS_CONFIGURED:
            return TDX_TD_KEYS_NOT_CONFIGURED
        if op_lock and not c.lock(self.op_state_lock, op_excl):
            return _BUSY_OP_STATE
        if self.op_state not in OP_STATE_ALLOWED[leaf]:
            return TDX_OP_STATE_INCORRECT
        return TDX_SUCCESS

    def _page_info_ok(self, gpa: int, level: int, lo: int, hi: int) -> bool:
        """§0.2 page_info: level range, alignment to the level, private GPA within GPAW."""
        if not lo <= level <= hi or gpa < 0:
            return False
        if gpa & ((1 << (12 + 9 * level)) - 1):
            return False
        return gpa < (1 << (self.gpaw - 1))  # below the shared bit

    def _details(self, w: Walk, level: int) -> tuple[int, int]:
        """RCX/RDX error detail: architectural entry and level_state."""
        st = w.state
        return S.arch_entry(st, w.pfn, self.sept_ve_disable), S.level_state(level, st)

    def _fail(self, status: int, w: Walk, level: int | None = None) -> TdxResult:
        rcx, rdx = self._details(w, w.level if level is None else level)
        return TdxResult(status, rcx, rdx)

    def _enter_sept(self, c: CallCtx, leaf: str, gpa: int, level: int, lo: int, hi: int,
                    tree_excl: bool | None, **prologue: object):
        """§2.1 steps 1-7 for a SEAMCALL on one S-EPT entry, in the module's order: the
        common prologue, the page_info operand (levels ``lo``..``hi``), then tree lock,
        walk and entry lock.  Returns a ``Walk`` or the first failure as a ``TdxResult``."""
        err = self._prologue(c, leaf, **prologue)
        if err:
            return TdxResult(err)
        if not self._page_info_ok(gpa, level, lo, hi):
            return TdxResult(_INVALID_RCX)
        return self._walk_locked(c, gpa, level, tree_excl)

    def _walk_locked(self, c: CallCtx, gpa: int, level: int, tree_excl: bool | None):
        """§2.1 steps 6-7: tree lock, walk to ``level``, host entry lock.

        Returns a ``Walk`` or a failure ``TdxResult``.  ``tree_excl`` None = no tree lock.
        """
        if tree_excl is not None and not c.lock(self.sept_lock, tree_excl):
            return TdxResult(_BUSY_SEPT)
        w = S.walk(self.root, gpa >> 12, level)
        if w.level != level:
            return self._fail(_WALK_FAILED_RCX, w)
        if not c.lock_entry_host(w.page, w.idx):
            return self._fail(_BUSY_RCX, w)
        return w

    def _tracking_required(self) -> bool:
        return self.op_state == OP_RUNNABLE

    def is_tlb_tracked(self, bepoch: int) -> bool:
        """§5.2 ``is_tlb_tracked``."""
        e = self.td_epoch
        return bepoch < e - 1 or (bepoch == e - 1 and self.refcount[bepoch & 1] == 0)

    def _object_pfn(self, w: Walk) -> int:
        """PFN whose PAMT entry carries BEPOCH: the guest page, or the child S-EPT page."""
        return w.pfn

    def _bepoch(self, pfn: int) -> int:
        e = self.pamt.find(pfn)
        return 0 if e is None else e.bepoch

    def _check_blocked_tracked(self, w: Walk, level: int) -> TdxResult | None:
        """RUNNABLE break-before-make: blocked at this level, and the block TLB-tracked."""
        if not self._tracking_required():
            return None
        if w.state not in S.ANY_BLOCKED:
            return self._fail(_NOT_BLOCKED_RCX, w, level)
        if not self.is_tlb_tracked(self._bepoch(self._object_pfn(w))):
            return TdxResult(_NOT_TRACKED_RCX)
        return None

    def _lock_new_page(self, c: CallCtx, pfn: int, size: int) -> TdxResult | None:
        """R8 page: aligned, DPAMT-backed, PAMT-locked exclusive, and free over its range."""
        if pfn < 0 or pfn & ((1 << (9 * size)) - 1):
            return TdxResult(_INVALID_R8)
        if self.dpamt and size == 0 and (pfn & ~511) not in self.pamt.dpamt_backed:
            return TdxResult(TDX_MISSING_PAMT_PAGE_PAIR)
        if not c.lock_pamt(self.pamt, pfn, True):
            return TdxResult(_BUSY_R8)
        if not self.pamt.range_free(pfn, size):
            return TdxResult(_METADATA_R8)
        return None

    def _set_entry(self, page: SeptPage, idx: int, state: int, pfn: int) -> None:
        page.set_state(idx, state)
        page.pfns[idx] = pfn
        page.acc.pop(idx, None)  # sept_cleanup_if_pending: every rewrite clears accept_counter

    def _link_child(self, w: Walk, pfn: int) -> SeptPage:
        level = w.page.level
        child = SeptPage(level - 1, w.page.gfn_of(w.idx), pfn)
        w.page.child[w.idx] = child
        self._set_entry(w.page, w.idx, S.NL_MAPPED, pfn)
        self.pamt.assign(pfn, PT_EPT, 0, self.td_id)
        self.child_count += 1
        return child

    def _unlink_child(self, w: Walk) -> SeptPage:
        child = w.page.child.pop(w.idx)
        self.pamt.free(child.pfn)
        self.child_count -= 1
        self.unflushed.add(child.pfn)
        return child

    # =============================================================================== TD state
    def tdh_mng_init(self) -> TdxResult:
        """TDH.MNG.INIT (leaf 21), kernel ``tdh_mng_init()``: UNINITIALIZED -> INITIALIZED."""
        return self._call("TDH.MNG.INIT", self._mng_init, key=KEY_OP_STATE)

    def _mng_init(self, c: CallCtx) -> TdxResult:
        if not c.lock(self.tdr_lock, True):
            return TdxResult(with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_RCX))
        if self.op_state != OP_UNINITIALIZED:
            return TdxResult(TDX_OP_STATE_INCORRECT)
        c.point()
        self.op_state = OP_INITIALIZED
        return _OK

    def tdh_mr_finalize(self) -> TdxResult:
        """TDH.MR.FINALIZE (leaf 17), kernel ``tdh_mr_finalize()``: INITIALIZED -> RUNNABLE."""
        return self._call("TDH.MR.FINALIZE", self._mr_finalize, key=KEY_OP_STATE)

    def _mr_finalize(self, c: CallCtx) -> TdxResult:
        # TDR (in RCX) exclusive and no OP_STATE lock, as in tdh_mr_finalize.c; the TDR lock
        # alone excludes every S-EPT SEAMCALL.  The "at least one vCPU" check is not modelled.
        err = self._prologue(c, "TDH.MR.FINALIZE", tdr_excl=True, op_lock=False,
                             tdr_busy=_BUSY_RCX)
        if err:
            return TdxResult(err)
        c.point()
        self.op_state = OP_RUNNABLE
        return _OK

    def tdh_mng_vpflushdone(self) -> TdxResult:
        """TDH.MNG.VPFLUSHDONE (leaf 24), kernel ``tdh_mng_vpflushdone()``: keys -> BLOCKED."""
        return self._call("TDH.MNG.VPFLUSHDONE", self._vpflushdone, key=KEY_LIFECYCLE)

    def _vpflushdone(self, c: CallCtx) -> TdxResult:
        if self.lifecycle != TD_KEYS_CONFIGURED:
            return TdxResult(TDX_LIFECYCLE_STATE_INCORRECT)
        if any(v.in_guest for v in self.vcpus.values()):
            return TdxResult(TDX_FLUSHVP_NOT_DONE)
        c.point()
        self.lifecycle = TD_BLOCKED
        return _OK

    def tdh_mng_key_freeid(self) -> TdxResult:
        """TDH.MNG.KEY.FREEID (leaf 20), kernel ``tdh_mng_key_freeid()``: HKID released,
        lifecycle TD_TEARDOWN, after which RECLAIM is allowed."""
        return self._call("TDH.MNG.KEY.FREEID", self._key_freeid, key=KEY_LIFECYCLE)

    def _key_freeid(self, c: CallCtx) -> TdxResult:
        if self.lifecycle != TD_BLOCKED:
            return TdxResult(TDX_LIFECYCLE_STATE_INCORRECT)
        c.point()
        self.lifecycle = TD_TEARDOWN
        return _OK

    def release_hkid(self) -> None:
        """Teardown helper: VPFLUSHDONE then KEY.FREEID (KVM ``tdx_mmu_release_hkid``)."""
        for r in (self.tdh_mng_vpflushdone(), self.tdh_mng_key_freeid()):
            if not r.ok:
                raise RuntimeError(f"HKID release failed: {r.name}")

    # ============================================================================ S-EPT calls
    def tdh_mem_sept_add(self, gpa: int, level: int, pfn: int) -> TdxResult:
        """TDH.MEM.SEPT.ADD (leaf 3), kernel ``tdh_mem_sept_add()``: FREE -> NL_MAPPED at
        ``level`` with the new S-EPT page ``pfn`` (512 FREE entries)."""
        return self._call("TDH.MEM.SEPT.ADD", self._sept_add, gpa, level, pfn,
                          key=self._entry_key(gpa, level))

    def _sept_add(self, c: CallCtx, gpa: int, level: int, pfn: int) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.SEPT.ADD", gpa, level, 1, self.pwl,
                             tree_excl=False)
        if isinstance(w, TdxResult):
            return w
        if w.state != S.FREE:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        bad = self._lock_new_page(c, pfn, 0)
        if bad:
            return bad
        c.point()
        self._link_child(w, pfn)
        return _OK

    def tdh_mem_page_add(self, gpa: int, pfn: int, source_pfn: int | None = None) -> TdxResult:
        """TDH.MEM.PAGE.ADD (leaf 2), kernel ``tdh_mem_page_add()``: build-time 4K add,
        FREE -> MAPPED (no ACCEPT needed), GPA measured into MRTD."""
        return self._call("TDH.MEM.PAGE.ADD", self._page_add, gpa, pfn,
                          key=KEY_SEPT_TREE)

    def _page_add(self, c: CallCtx, gpa: int, pfn: int) -> TdxResult:
        # TDR exclusive serializes against every other S-EPT SEAMCALL, so no tree lock.
        w = self._enter_sept(c, "TDH.MEM.PAGE.ADD", gpa, 0, 0, 0,
                             tree_excl=None, tdr_excl=True, op_lock=False)
        if isinstance(w, TdxResult):
            return w
        if w.state != S.FREE:
            return self._fail(_STATE_INCORRECT_RCX, w, 0)
        bad = self._lock_new_page(c, pfn, 0)
        if bad:
            return bad
        c.point()
        self._set_entry(w.page, w.idx, S.MAPPED, pfn)
        self.pamt.assign(pfn, PT_REG, 0, self.td_id)
        self.child_count += 1
        self.mrtd_log.append(gpa)
        return _OK

    def tdh_mem_page_aug(self, gpa: int, level: int, pfn: int) -> TdxResult:
        """TDH.MEM.PAGE.AUG (leaf 6), kernel ``tdh_mem_page_aug()``: FREE -> PENDING at level
        0 (4K) or 1 (2M, ``pfn`` 2M-aligned and the whole 2M range free)."""
        return self._call("TDH.MEM.PAGE.AUG", self._page_aug, gpa, level, pfn,
                          key=self._entry_key(gpa, level))

    def _page_aug(self, c: CallCtx, gpa: int, level: int, pfn: int) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.PAGE.AUG", gpa, level, 0, 1,
                             tree_excl=False)
        if isinstance(w, TdxResult):
            return w
        if w.state != S.FREE:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        bad = self._lock_new_page(c, pfn, level)
        if bad:
            return bad
        c.point()
        self._set_entry(w.page, w.idx, S.PENDING, pfn)
        self.pamt.assign(pfn, PT_REG, level, self.td_id)  # BEPOCH = 0
        self.child_count += S.pages_at(level)
        return _OK

    def tdh_mem_range_block(self, gpa: int, level: int) -> TdxResult:
        """TDH.MEM.RANGE.BLOCK (leaf 7), kernel ``tdh_mem_range_block()``: clear RWX and record
        BEPOCH = TD_EPOCH on the blocked object; no TLB flush."""
        return self._call("TDH.MEM.RANGE.BLOCK", self._range_block, gpa, level)

    def _range_block(self, c: CallCtx, gpa: int, level: int) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.RANGE.BLOCK", gpa, level, 0, self.pwl,
                             tree_excl=True)
        if isinstance(w, TdxResult):
            return w
        st = w.state
        if st in S.ANY_BLOCKED:
            return self._fail(with_operand(TDX_GPA_RANGE_ALREADY_BLOCKED, TDX_OPERAND_ID_RCX),
                              w, level)
        if st not in S.BLOCK_OF:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        c.point()
        w.page.set_state(w.idx, S.BLOCK_OF[st])
        w.page.acc.pop(w.idx, None)  # a half-done 2M accept starts over
        self.pamt.set_bepoch(self._object_pfn(w), self.td_epoch)
        return _OK

    def tdh_mem_range_unblock(self, gpa: int, level: int) -> TdxResult:
        """TDH.MEM.RANGE.UNBLOCK (leaf 39), kernel ``tdh_mem_range_unblock()`` (unused by
        upstream KVM): *BLOCKED -> unblocked, needs TLB tracking when RUNNABLE."""
        return self._call("TDH.MEM.RANGE.UNBLOCK", self._range_unblock, gpa, level)

    def _range_unblock(self, c: CallCtx, gpa: int, level: int) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.RANGE.UNBLOCK", gpa, level, 0, self.pwl,
                             tree_excl=True)
        if isinstance(w, TdxResult):
            return w
        if w.state not in S.ANY_BLOCKED:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        if self._tracking_required() and not self.is_tlb_tracked(self._bepoch(w.pfn)):
            # 1.5.x reports the SEPT tree as the operand; the 2.0 source reports RCX.
            op = TDX_OPERAND_ID_SEPT if self.version == "1.5" else TDX_OPERAND_ID_RCX
            return TdxResult(with_operand(TDX_TLB_TRACKING_NOT_DONE, op))
        c.point()
        w.page.set_state(w.idx, S.UNBLOCK_OF[w.state])
        return _OK

    def tdh_mem_track(self) -> TdxResult:
        """TDH.MEM.TRACK (leaf 38), kernel ``tdh_mem_track()``: TD_EPOCH += 1, allowed only
        when no vCPU still runs in the previous epoch."""
        return self._call("TDH.MEM.TRACK", self._track, key=KEY_EPOCH)

    def _track(self, c: CallCtx) -> TdxResult:
        err = self._prologue(c, "TDH.MEM.TRACK", tdr_busy=_BUSY_RCX)
        if err:
            return TdxResult(err)
        if not c.lock(self.epoch_lock, True):
            return TdxResult(_BUSY_EPOCH)
        if self.refcount[(self.td_epoch - 1) & 1]:
            return TdxResult(TDX_PREVIOUS_TLB_EPOCH_BUSY)
        c.point()
        self.td_epoch += 1
        self.track_count += 1
        return _OK

    def tdh_mem_page_remove(self, gpa: int, level: int) -> TdxResult:
        """TDH.MEM.PAGE.REMOVE (leaf 29), kernel ``tdh_mem_page_remove()``: leaf -> FREE; RCX
        returns the HPA; the host must WBINVD every 4K of it before reuse."""
        return self._call("TDH.MEM.PAGE.REMOVE", self._page_remove, gpa, level,
                          key=self._entry_key(gpa, level))

    def _page_remove(self, c: CallCtx, gpa: int, level: int) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.PAGE.REMOVE", gpa, level, 0, 2,
                             tree_excl=False)
        if isinstance(w, TdxResult):
            return w
        if w.state not in S.LEAF_STATES:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        pfn = w.pfn
        if not c.lock_pamt(self.pamt, pfn, True):
            return TdxResult(_BUSY_RCX)
        bad = self._check_blocked_tracked(w, level)
        if bad:
            return bad
        c.point()
        self._set_entry(w.page, w.idx, S.FREE, 0)
        self.child_count -= S.pages_at(level)
        self.pamt.free(pfn)
        self.unflushed.update(range(pfn, pfn + S.pages_at(level)))
        return TdxResult(TDX_SUCCESS, rcx=pfn << 12)

    def tdh_mem_sept_remove(self, gpa: int, level: int) -> TdxResult:
        """TDH.MEM.SEPT.REMOVE (leaf 30), kernel ``tdh_mem_sept_remove()``: NL entry -> FREE
        once all 512 children are FREE; RCX returns the freed S-EPT page HPA."""
        return self._call("TDH.MEM.SEPT.REMOVE", self._sept_remove, gpa, level)

    def _sept_remove(self, c: CallCtx, gpa: int, level: int) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.SEPT.REMOVE", gpa, level, 1, self.pwl,
                             tree_excl=True)
        if isinstance(w, TdxResult):
            return w
        if w.state not in S.NON_LEAF_STATES:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        bad = self._check_blocked_tracked(w, level)
        if bad:
            return bad
        if w.page.child[w.idx].used:
            return TdxResult(with_operand(TDX_EPT_PAGE_NOT_FREE, TDX_OPERAND_ID_RCX))
        if not c.lock_pamt(self.pamt, w.pfn, True):
            return TdxResult(_BUSY_RCX)
        c.point()
        child = self._unlink_child(w)
        self._set_entry(w.page, w.idx, S.FREE, 0)
        return TdxResult(TDX_SUCCESS, rcx=child.pfn << 12)

    def tdh_mem_page_demote(self, gpa: int, level: int, pfn: int, *,
                            interrupt_pending: bool = False,
                            pamt_pfns: tuple[int, int] | None = None) -> TdxResult:
        """TDH.MEM.PAGE.DEMOTE (leaf 15), kernel ``tdh_mem_page_demote()``: split a leaf at
        ``level`` (1 or 2) into 512 children (state = unblk(parent), consecutive HPAs) held by
        the new S-EPT page ``pfn``; the parent becomes NL_MAPPED (no UNBLOCK needed).

        ``interrupt_pending`` gives TDX_INTERRUPTED_RESTARTABLE unless the module enumerates
        ENHANCED_DEMOTE_INTERRUPTIBILITY (bit 51).  ``pamt_pfns``: DPAMT page pair (R12/R13).
        """
        return self._call("TDH.MEM.PAGE.DEMOTE", self._page_demote, gpa, level, pfn,
                          interrupt_pending, pamt_pfns, key=self._entry_key(gpa, level))

    def _resize_needs_block(self, w: Walk) -> bool:
        # NON-BLOCKING-RESIZE (unverified): an unblocked entry may be resized in place.
        return not (self.non_blocking_resize and w.state not in S.ANY_BLOCKED)

    def _page_demote(self, c: CallCtx, gpa: int, level: int, pfn: int, interrupt: bool,
                     pamt_pfns: tuple[int, int] | None) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.PAGE.DEMOTE", gpa, level, 1, 2,
                             tree_excl=False)
        if isinstance(w, TdxResult):
            return w
        if w.state not in S.LEAF_STATES:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        if self._resize_needs_block(w):
            bad = self._check_blocked_tracked(w, level)
            if bad:
                return bad
        bad = self._lock_new_page(c, pfn, 0)
        if bad:
            return bad
        if interrupt and not self.features & FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY:
            return TdxResult(TDX_INTERRUPTED_RESTARTABLE, rcx=gpa | level)
        base2m = w.pfn & ~511
        if self.dpamt and level == 1 and base2m not in self.pamt.dpamt_backed:
            if pamt_pfns is None:
                return TdxResult(with_operand(TDX_MISSING_PAMT_PAGE_PAIR, TDX_OPERAND_ID_RCX))
        c.point()
        if self.dpamt and level == 1:
            self.pamt.dpamt_backed.add(base2m)
        self._split(w, pfn)
        return _OK

    def _split(self, w: Walk, pfn: int) -> None:
        parent_state, parent_pfn = w.state, w.pfn
        child_state = S.UNBLOCK_OF.get(parent_state, parent_state)
        self.pamt.split(parent_pfn, w.page.level - 1)
        child = self._link_child(w, pfn)
        step = S.pages_at(child.level)
        child.state[:] = bytes([child_state]) * S.ENTRIES
        child.pfns[:] = type(child.pfns)("Q", range(parent_pfn, parent_pfn + step * S.ENTRIES,
                                                     step))
        child.used = S.ENTRIES

    def tdh_mem_page_promote(self, gpa: int, level: int, *,
                             interrupt_pending: bool = False) -> TdxResult:
        """TDH.MEM.PAGE.PROMOTE (leaf 23), kernel ``tdh_mem_page_promote()`` (not used by KVM):
        merge 512 identical, contiguous MAPPED-or-PENDING children into a leaf at ``level``;
        RCX returns the freed S-EPT page HPA."""
        excl = self.version == "2.0"
        key = KEY_SEPT_TREE if excl else self._entry_key(gpa, level)
        return self._call("TDH.MEM.PAGE.PROMOTE", self._page_promote, gpa, level,
                          interrupt_pending, key=key)

    def _page_promote(self, c: CallCtx, gpa: int, level: int, interrupt: bool) -> TdxResult:
        w = self._enter_sept(c, "TDH.MEM.PAGE.PROMOTE", gpa, level, 1, 2,
                             tree_excl=self.version == "2.0")
        if isinstance(w, TdxResult):
            return w
        if w.state not in S.NON_LEAF_STATES:
            return self._fail(_STATE_INCORRECT_RCX, w, level)
        if not c.lock_pamt(self.pamt, w.pfn, True):
            return TdxResult(_BUSY_RCX)
        if self._resize_needs_block(w):
            bad = self._check_blocked_tracked(w, level)
            if bad:
                return bad
        child = w.page.child[w.idx]
        if self.version == "1.5":  # 1.5 locks every child entry; 2.0 relies on the tree lock
            for i in range(S.ENTRIES):
                if not c.lock_entry_host(child, i):
                    return TdxResult(_BUSY_RCX)
        if not self._mergeable(child):
            return TdxResult(with_operand(TDX_EPT_INVALID_PROMOTE_CONDITIONS, TDX_OPERAND_ID_RCX))
        if interrupt:
            return TdxResult(TDX_INTERRUPTED_RESTARTABLE, rcx=gpa | level)
        c.point()
        self._merge(w, child)
        return TdxResult(TDX_SUCCESS, rcx=child.pfn << 12)

    @staticmethod
    def _mergeable(child: SeptPage) -> bool:
        """§3.11 step 5: child[0] aligned, MAPPED or PENDING, every child = child[0] + i."""
        st0, pfn0 = child.state[0], child.pfns[0]
        step = S.pages_at(child.level)
        if st0 not in (S.MAPPED, S.PENDING) or pfn0 & (step * S.ENTRIES - 1):
            return False
        if child.state.count(st0) != S.ENTRIES:
            return False
        return all(child.pfns[i] == pfn0 + i * step for i in range(S.ENTRIES))

    def _merge(self, w: Walk, child: SeptPage) -> None:
        st0, pfn0 = child.state[0], child.pfns[0]
        self._unlink_child(w)
        self._set_entry(w.page, w.idx, st0, pfn0)
        self.pamt.merge(pfn0, w.page.level)

    # ============================================================================ PHYMEM calls
    def tdh_phymem_page_wbinvd(self, pfn: int) -> TdxResult:
        """TDH.PHYMEM.PAGE.WBINVD (leaf 41), kernel ``tdh_phymem_page_wbinvd_hkid()``: write
        back and invalidate one 4K page's cache lines for the TD's HKID; the page must be
        free (already removed)."""
        return self._call("TDH.PHYMEM.PAGE.WBINVD", self._wbinvd, pfn, key=KEY_PAMT)

    def _wbinvd(self, c: CallCtx, pfn: int) -> TdxResult:
        if not c.lock_pamt(self.pamt, pfn, False):
            return TdxResult(_BUSY_RCX)
        if self.pamt.page_type(pfn) != PT_NDA:
            return TdxResult(_METADATA_RCX)
        c.point()
        self.unflushed.discard(pfn)
        return _OK

    def tdh_phymem_page_reclaim(self, pfn: int) -> TdxResult:
        """TDH.PHYMEM.PAGE.RECLAIM (leaf 28), kernel ``tdh_phymem_page_reclaim()``: return a
        TD page (guest or S-EPT) to the host after teardown.  RCX = page type, RDX = owner,
        R8 = page size."""
        return self._call("TDH.PHYMEM.PAGE.RECLAIM", self._reclaim, pfn, key=KEY_PAMT)

    def _reclaim(self, c: CallCtx, pfn: int) -> TdxResult:
        if not c.lock_pamt(self.pamt, pfn, True):
            return TdxResult(_BUSY_RCX)
        e = self.pamt.find(pfn)
        if e is None or e.base != pfn or e.pt in (PT_NDA, PT_RSVD):
            return TdxResult(_METADATA_RCX)
        if e.owner != self.td_id or self.lifecycle != TD_TEARDOWN:
            return TdxResult(TDX_LIFECYCLE_STATE_INCORRECT)
        c.point()
        self.pamt.free(pfn)
        self.child_count -= S.pages_at(e.size) if e.pt == PT_REG else 1
        return TdxResult(TDX_SUCCESS, rcx=e.pt, rdx=e.owner, r8=e.size)

    def tdh_phymem_pamt_add(self, pfn_2m: int, pamt_pfns: tuple[int, int]) -> TdxResult:
        """TDH.PHYMEM.PAMT.ADD (leaf 58, DPAMT), kernel ``tdh_phymem_pamt_add()``: back a 2M
        physical range with PAMT_4K pages."""
        return self._call("TDH.PHYMEM.PAMT.ADD", self._pamt_add, pfn_2m, key=KEY_PAMT)

    def _pamt_add(self, c: CallCtx, pfn_2m: int) -> TdxResult:
        if pfn_2m & 511:
            return TdxResult(_INVALID_RCX)
        if pfn_2m in self.pamt.dpamt_backed:
            return TdxResult(with_operand(TDX_HPA_RANGE_NOT_FREE, TDX_OPERAND_ID_RCX))
        c.point()
        self.pamt.dpamt_backed.add(pfn_2m)
        return _OK

    def tdh_phymem_pamt_remove(self, pfn_2m: int) -> TdxResult:
        """TDH.PHYMEM.PAMT.REMOVE (leaf 59, DPAMT), kernel ``tdh_phymem_pamt_remove()``."""
        return self._call("TDH.PHYMEM.PAMT.REMOVE", self._pamt_remove, pfn_2m, key=KEY_PAMT)

    def _pamt_remove(self, c: CallCtx, pfn_2m: int) -> TdxResult:
        if pfn_2m not in self.pamt.dpamt_backed or not self.pamt.range_free(pfn_2m, 1):
            return TdxResult(with_operand(TDX_HPA_RANGE_NOT_FREE, TDX_OPERAND_ID_RCX))
        c.point()
        self.pamt.dpamt_backed.discard(pfn_2m)
        return _OK

    # ================================================================================= vCPUs
    def tdh_vp_create(self, vcpu_id: int) -> Vcpu:
        """TDH.VP.CREATE/ADDCX/INIT collapsed: register a vCPU (no status modelled)."""
        if vcpu_id in self.vcpus:
            raise ValueError(f"vCPU {vcpu_id} exists")
        v = self.vcpus[vcpu_id] = Vcpu(vcpu_id)
        return v

    def _vcpu(self, vcpu_id: int) -> Vcpu:
        v = self.vcpus.get(vcpu_id)
        return v if v is not None else self.tdh_vp_create(vcpu_id)

    def tdh_vp_enter(self, vcpu_id: int) -> TdxResult:
        """TDH.VP.ENTER (leaf 0), kernel ``tdh_vp_enter()``, epoch part only: take a
        REFCOUNT[TD_EPOCH & 1] reference held until ``td_exit``, flush the TD's TLB contexts
        if VCPU_EPOCH is stale, run the zero-step filter.  ``exit`` is set (and the vCPU is
        not in the guest) when the zero-step filter refused entry."""
        v = self._vcpu(vcpu_id)
        if v.in_guest:
            raise ValueError(f"vCPU {vcpu_id} is already in guest mode")
        return self._call("TDH.VP.ENTER", self._vp_enter, v, key=KEY_EPOCH)

    def _vp_enter(self, c: CallCtx, v: Vcpu) -> TdxResult:
        if self.fatal:
            return TdxResult(TDX_TD_FATAL)
        if self.lifecycle != TD_KEYS_CONFIGURED:
            return TdxResult(TDX_TD_KEYS_NOT_CONFIGURED)
        if self.op_state not in OP_STATE_ALLOWED["TDH.VP.ENTER"]:
            return TdxResult(TDX_OP_STATE_INCORRECT)
        if not c.lock(self.epoch_lock, False):
            return TdxResult(_BUSY_EPOCH)
        if v.stepping_gpas and not c.lock(self.sept_lock, True):
            return TdxResult(_BUSY_SEPT)
        c.point()
        self.refcount[self.td_epoch & 1] += 1
        if v.epoch != self.td_epoch and v.associated:
            self._flush(v)
        v.epoch = self.td_epoch
        v.associated = True
        v.in_guest = True
        return self._zero_step_filter(v)

    def _flush(self, v: Vcpu) -> None:
        v.tlb.clear()
        v.flushes += 1
        self.tlb_flush_count += 1

    def _zero_step_filter(self, v: Vcpu) -> TdxResult:
        """td_exit_stepping.c: refuse entry while a recorded GPA would still fault."""
        if not v.stepping_gpas:
            return _OK
        for gpa in sorted(v.stepping_gpas):
            w = S.walk(self.root, gpa >> 12, 0)
            # [inferred] a PENDING leaf no longer faults for the filter: the host did map it,
            # and the guest's ACCEPT at that RIP must be allowed to run.
            if w.state not in (S.MAPPED, S.PENDING):
                self._td_exit(v)
                eeq = make_eeq(EEQ_TYPE_NONE, 0, w.level, S.ARCH_STATE[w.state],
                               S.is_leaf(w.state))
                return TdxResult(TDX_SUCCESS, exit=EptViolationExit(gpa, eeq))
        v.stepping_gpas.clear()
        v.same_rip_faults = 0
        return _OK

    def td_exit(self, vcpu_id: int) -> None:
        """A TD exit (any reason): drop the vCPU's REFCOUNT[VCPU_EPOCH & 1] reference."""
        v = self.vcpus[vcpu_id]
        if not v.in_guest:
            raise ValueError(f"vCPU {vcpu_id} is not in guest mode")
        self.sched.point(_sched.VCPU, KEY_EPOCH, True)
        self._td_exit(v)

    def _td_exit(self, v: Vcpu) -> None:
        self.refcount[v.epoch & 1] -= 1
        v.in_guest = False

    def _ept_violation_exit(self, v: Vcpu, gpa: int, eeq: int, rip: int | None) -> EptViolationExit:
        self._record_stepping(v, gpa, rip)
        self._td_exit(v)
        return EptViolationExit(gpa, eeq)

    def _record_stepping(self, v: Vcpu, gpa: int, rip: int | None) -> None:
        """Zero-step heuristics: count private EPT violations at one RIP."""
        if rip is None:
            return
        if rip != v.last_rip:
            v.last_rip, v.same_rip_faults = rip, 0
            v.stepping_gpas.clear()
        v.same_rip_faults += 1
        if v.same_rip_faults >= STEPPING_EPF_THRESHOLD:
            v.stepping_gpas.add(gpa & ~0xFFF)

    # ============================================================================ guest side
    def tdg_mem_page_accept(self, vcpu_id: int, gpa: int, level: int, *,
                            interrupt_after: int | None = None,
                            rip: int | None = None) -> TdcallResult:
        """TDG.MEM.PAGE.ACCEPT (TDCALL leaf 6), guest ``tdx_accept_memory()``: §4.1.

        ``interrupt_after``: a guest interrupt becomes pending after that many 4K pages of a
        2M accept were zeroed in this call.  A violation TD-exits the vCPU.
        """
        v = self.vcpus.get(vcpu_id)
        if v is None or not v.in_guest:
            raise ValueError(f"vCPU {vcpu_id} is not in guest mode")
        return self._call("TDG.MEM.PAGE.ACCEPT", self._accept, v, gpa, level, interrupt_after,
                          rip, kind=_sched.TDCALL, key=self._entry_key(gpa, level))

    def _accept(self, c: CallCtx, v: Vcpu, gpa: int, level: int, interrupt_after: int | None,
                rip: int | None) -> TdcallResult:
        if not self._page_info_ok(gpa, level, 0, 1):
            return TdcallResult(_INVALID_RCX)
        w = S.walk(self.root, gpa >> 12, level)  # no tree lock: TLB tracking keeps it alive
        st = w.state
        if w.level != level:
            if st in S.GUEST_ACCESSIBLE_LEAF:
                return TdcallResult(with_operand(TDX_PAGE_ALREADY_ACCEPTED, w.level))
            return self._accept_violation(c, v, gpa, level, w, rip)
        if not c.lock_entry_guest(w.page, w.idx):
            return TdcallResult(_BUSY_RCX)  # host-priority busy is reported as plain BUSY
        st = w.state
        if st != S.FREE and not S.is_leaf(st):
            return TdcallResult(with_operand(TDX_PAGE_SIZE_MISMATCH, w.level))
        if st in S.GUEST_ACCESSIBLE_LEAF:
            return TdcallResult(with_operand(TDX_PAGE_ALREADY_ACCEPTED, w.level))
        if st != S.PENDING:
            return self._accept_violation(c, v, gpa, level, w, rip)
        c.point()
        return self._do_accept(w, level, interrupt_after)

    def _accept_violation(self, c: CallCtx, v: Vcpu, gpa: int, level: int, w: Walk,
                          rip: int | None) -> TdcallResult:
        c.point()
        st = w.state
        eeq = make_eeq(EEQ_TYPE_ACCEPT, level, w.level, S.ARCH_STATE[st], S.is_leaf(st))
        return TdcallResult(None, self._ept_violation_exit(v, gpa, eeq, rip))

    def _do_accept(self, w: Walk, level: int, interrupt_after: int | None) -> TdcallResult:
        """Zero the page(s); a 2M accept keeps progress in accept_counter across interrupts."""
        if level == 0:
            self.pages_zeroed += 1
            w.page.set_state(w.idx, S.MAPPED)
            return TdcallResult(TDX_SUCCESS)
        done = w.page.acc.get(w.idx, 0)
        budget = S.ENTRIES - done if interrupt_after is None else max(1, interrupt_after)
        todo = min(budget, S.ENTRIES - done)
        self.pages_zeroed += todo
        if done + todo < S.ENTRIES:
            w.page.acc[w.idx] = done + todo
            return TdcallResult(TDX_SUCCESS, interrupted=True)
        w.page.acc.pop(w.idx, None)
        w.page.set_state(w.idx, S.MAPPED)
        return TdcallResult(TDX_SUCCESS)

    def guest_access(self, vcpu_id: int, gpa: int, write: bool = False,
                     rip: int | None = None) -> GuestAccess:
        """A guest load/store to a private GPA: TLB hit, MAPPED leaf, #VE, or EPT-violation
        exit (type PENDING_EPT_VIOLATION for a PENDING page with SEPT_VE_DISABLE)."""
        v = self.vcpus.get(vcpu_id)
        if v is None or not v.in_guest:
            raise ValueError(f"vCPU {vcpu_id} is not in guest mode")
        self.sched.point(_sched.VCPU, self._entry_key(gpa & ~0xFFF, 0), write)
        gfn = gpa >> 12
        hit = v.tlb.get(gfn)
        if hit is not None:
            return GuestAccess(hit, from_tlb=True)
        w = S.walk(self.root, gfn, 0)
        st = w.state
        if st == S.MAPPED:
            pfn = w.pfn + (gfn & (S.pages_at(w.level) - 1))
            v.tlb[gfn] = pfn
            return GuestAccess(pfn)
        if st == S.PENDING and not self.sept_ve_disable:
            return GuestAccess(None, ve=True)
        eeq_type = EEQ_TYPE_PENDING_EPT_VIOLATION if st == S.PENDING else EEQ_TYPE_NONE
        eeq = make_eeq(eeq_type, 0, w.level, S.ARCH_STATE[st], S.is_leaf(st))
        return GuestAccess(None, exit=self._ept_violation_exit(v, gpa, eeq, rip))

    # ============================================================================ inspection
    def entry(self, gpa: int, level: int) -> tuple[int, int] | None:
        """(state, pfn) of the entry at exactly ``level``, or None if the walk stops above."""
        w = S.walk(self.root, gpa >> 12, level)
        return (w.state, w.pfn) if w.level == level else None

    def lookup(self, gpa: int) -> SeptEntryInfo:
        """Where the walk for a 4K GPA stops: (gfn of that entry, level, state, pfn)."""
        w = S.walk(self.root, gpa >> 12, 0)
        return SeptEntryInfo(w.page.gfn_of(w.idx), w.level, w.state, w.pfn)

    def violations(self) -> list[str]:
        """Broken internal invariants (see ``invariants.py``); empty when consistent."""
        from .invariants import module_violations

        return module_violations(self)

    def results_by_status(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, name), n in self.results.items():
            out[name] += n
        return dict(out)


def sept_leaves(module: TdxModule) -> Iterator[SeptEntryInfo]:
    """Every non-FREE S-EPT entry (leaves *and* non-leaves) as (gfn, level, state, pfn).

    For a non-leaf the pfn is the child S-EPT page.  Deterministic pre-order.
    """
    return S.iter_entries(module.root)
