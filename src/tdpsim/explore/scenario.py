"""Scenarios as files: TOML under ``explore/scenarios/`` (or any path), validated on load.

A scenario names a VM shape (``[vm]`` → ``VmConfig``), a policy (``[policy]`` → ``Policy``),
sequential ``[[setup]]`` ops run before exploration, and ``[[threads]]`` whose ``ops`` run
concurrently under the explorer.  ``[explore]`` holds the checks' knobs.  Parameters
(``"policy.mirror_promotion=unpatched"``) override any value before validation, so one file
covers the patched and unpatched kernels.

Every error names the file and the offending path (``threads[1].ops[0].gfn``) and says what
was expected; no traceback reaches the user.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from tdpsim.model.invariants import check_invariants
from tdpsim.model.kvm import (
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, KVM_REQ_TLB_FLUSH, MemorySafetyBUG, RecordingExternalOps,
)
from tdpsim.model.tlb import (
    STALE_NONE, STALE_RETURNED, tlb_entry_is_stale, tlb_translation_stale,
)
from tdpsim.model.tdx import create_td
import numpy as np


from tdpsim.model.tdx_module.sept import FREE, iter_pages
from tdpsim.model.policy import Policy
from tdpsim.model.profile import UnknownKernelProfile, get_profile
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.userfile import NotTextError, read_user_text

from .engine import ExplorerError, World, table_digests
from .ops import KEY_SRCU, OPS, OpContext, RetryBoundExceeded, op_params
from .snapshot import Snapshot
from .tracking import TRACKER, track

_TOP_KEYS = {"name", "summary", "description", "vm", "policy", "explore", "setup", "threads",
             "tdx"}
_EXPLORE_KEYS = {"retry_bound": int, "fail_on_warn": bool, "max_steps": int,
                 "invariants": str}
_TDX_KEYS = {"external_ops": str, "private_max_level": int}
# Ranges of the integer knobs: outside them KVM (or the model) would refuse the VM or loop
# forever; the scenario's author hears which key is wrong before anything runs.
_INT_BOUNDS = {"vm.nr_vcpus": (1, 64), "vm.mem_bytes": (4096, 1 << 46),
               "vm.base_gfn": (0, 1 << 40), "vm.hva_skew": (0, 1 << 40),
               "vm.host_page_level": (1, 3), "vm.gmem_folio_order": (0, 18),
               "vm.root_level": (4, 5), "explore.retry_bound": (0, 1 << 20),
               "explore.max_steps": (1, 1 << 24), "tdx.private_max_level": (1, 3)}
#: Integer op arguments are gfns, counts and ratios: never negative, within a 52-bit gfn.
_OP_INT_MAX = (1 << 52) - 1


class ScenarioError(ExplorerError):
    """A scenario file or parameter is invalid."""


@dataclass(frozen=True)
class OpSpec:
    op: str
    args: dict[str, Any]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool)
                         and k in ("gfn", "start", "end") else f"{k}={v}"
                         for k, v in self.args.items())
        return f"{self.op}({args})"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; ``params`` are the overrides it was built with."""

    name: str
    summary: str
    description: str
    vm: VmConfig
    policy: Policy
    setup: tuple[OpSpec, ...]
    threads: tuple[tuple[str, tuple[OpSpec, ...]], ...]
    retry_bound: int = 16
    fail_on_warn: bool = True
    max_steps: int = 20000
    external_ops: str = "tdx"
    invariants: str = "end"
    private_max_level: int = 2
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    sha256: str = ""  # of the scenario file's bytes: a schedule names the exact scenario
    setup_snapshot: bool = field(default=True, compare=False)
    _memo: dict = field(default_factory=dict, compare=False, repr=False)
    _snap: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def thread_names(self) -> list[str]:
        return [n for n, _ in self.threads]

    def build(self) -> World:
        """Return a world in the post-setup state whose threads the engine will interleave.

        The sequential setup (VM/TD creation, finalisation, ``[[setup]]`` ops) runs once per
        process and scenario; later builds restore a private copy of that state from a
        pickled snapshot (``snapshot.py``), which is exact and cheaper than re-running it.
        ``setup_snapshot=False`` re-runs the setup every time (the reference behaviour the
        tests compare against)."""
        if not self.setup_snapshot:
            return self._world(self._setup())
        snap = self._snap.get("setup")
        if snap is None:
            snap = self._snap["setup"] = Snapshot(self._setup())
        return self._world(snap.restore())

    def _setup(self) -> OpContext:
        """Create the VM, run the setup ops sequentially, start tracking."""
        tdx = None
        if self.vm.tdx and self.external_ops == "tdx":
            # tdx_handle_ept_violation retries locally, holding SRCU, parked between
            # attempts at its RETRY_WAIT point; the scenario's bound ends a livelock.
            kvm, tdx = create_td(self.vm, self.policy, max_local_retries=self.retry_bound,
                                 sept_ve_disable=False)
            if tdx.tdx_td_finalize(kvm):
                raise ScenarioError(f"{self.source}: TDH.MR.FINALIZE failed")
        else:
            x86_ops = RecordingExternalOps(self.private_max_level) if self.vm.tdx else None
            kvm = create_vm(self.vm, self.policy, x86_ops)
        # Freed page-table frames back the next tables, as the page allocator would hand
        # them out: a walker that outlives a grace period then reads someone else's table.
        kvm.pt_frame_reuse = True
        ctx = OpContext(kvm, tdx, self.retry_bound)
        for i, spec in enumerate(self.setup):
            try:
                OPS[spec.op](ctx, **spec.args)
            except (ValueError, RetryBoundExceeded) as e:  # KvmUserError: the ioctl's -EINVAL
                raise ScenarioError(f"{self.source}: setup[{i}] ({spec.op}): {e}") from None
        if kvm.vm_bugged:
            raise ScenarioError(f"{self.source}: setup already bugged the VM: {kvm.bugs}")
        # Setup warnings are not findings of the exploration.
        track(kvm)
        return ctx

    def _world(self, ctx: OpContext) -> World:
        kvm, tdx = ctx.kvm, ctx.tdx
        tracker = TRACKER
        threads = [(name, _thread_body(ctx, tid, ops))
                   for tid, (name, ops) in enumerate(self.threads)]
        locks = {kvm.mmu_lock.key: kvm.mmu_lock,
                 kvm.tdp_mmu_pages_lock.key: kvm.tdp_mmu_pages_lock}
        cache: dict = {}
        end_checks, step_checks = _checks(kvm, tdx, self.invariants, self._memo, cache)
        end_checks.append(lambda: check_dirty_log(ctx))
        return World(kvm=kvm, threads=threads, locks=locks, tracker=tracker, tdx=tdx,
                     end_checks=end_checks, step_checks=step_checks,
                     fail_on_warn=self.fail_on_warn, retry_bound=self.retry_bound,
                     conditions=_conditions(ctx), cache=cache)

    def as_params(self) -> dict[str, Any]:
        return dict(self.params)


def _conditions(ctx: OpContext) -> dict:
    """What WAIT_COND points wait for: SRCU readers gone, each vCPU's IPI acknowledged."""
    conds = {KEY_SRCU: ctx.srcu_quiescent}
    for vcpu in ctx.kvm.vcpus:
        conds[vcpu.mode_key] = vcpu.kvm_ipi_acked
        conds[vcpu.exit_key] = vcpu.exit_done
    return conds


def _memo_key(kvm: Any, tdx: Any, cache: dict) -> bytes:
    """Key of the end-of-run invariant memo: everything ``check_invariants(kvm, tdx, True)``
    reads, so a hit returns exactly what running the checkers would.

    KVM: the table digest (content) and the SP structure (``engine.table_digests``, computed
    once per execution and shared with ``ExecutionResult.state_hash`` through ``cache``),
    mmu_lock state, bugs.  TD: every S-EPT page as raw arrays (state, flags, the pfns of its
    non-FREE entries, used, children, accept counters), the PAMT entries and entry locks,
    epochs/refcounts/vCPUs, module locks, unflushed pages, guest_memfd holes, fatal/teardown
    flags and KVM's vCPU modes; the memory attributes, invalidations in progress, the
    memslots' gfns and the host backing (split frames, migrated pages) the MMU checks
    compare leaves with.  Raw bytes instead of per-entry tuples: ~20x cheaper than
    ``repr(list(sept_leaves(m)))``.  Every key component the previous key (tables digest +
    S-EPT entries + epochs) had is kept, so the memo never merges states it used to keep
    apart."""
    digests = cache.get("digests")
    if digests is None:
        digests = table_digests(kvm)
    lock = kvm.mmu_lock
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((digests, lock.readers, lock.writer,
                   [(b.function, b.message) for b in kvm.bugs],
                   [v.mode for v in kvm.vcpus])).encode())
    if tdx is not None:
        m = tdx.module
        h.update(repr((tdx.state, tdx.wait_for_sept_zap, tdx.torn_down, tdx.fatal_errors,
                       m is None)).encode())
        if m is not None:
            for page in iter_pages(m.root):
                st = page.state
                h.update(b"P%d:%d:%d:%d:" % (page.level, page.base_gfn, page.pfn, page.used))
                h.update(st)
                h.update(page.flags)
                pfns = np.frombuffer(page.pfns, dtype=np.uint64)
                h.update(pfns[np.frombuffer(st, dtype=np.uint8) != FREE].tobytes())
                h.update(repr((sorted((i, c.pfn) for i, c in page.child.items()),
                               sorted(page.acc.items()))).encode())
            pamt = m.pamt
            h.update(repr((m.td_epoch, m.refcount, m.child_count, m.fatal,
                           sorted((i, v.in_guest, v.epoch) for i, v in m.vcpus.items()),
                           [lk.held for lk in (m.tdr_lock, m.op_state_lock, m.sept_lock,
                                               m.epoch_lock)],
                           sorted(m.unflushed), sorted(pamt._locks.items()), len(pamt)
                           )).encode())
            e = pamt._e
            if e:
                keys = np.fromiter(e.keys(), dtype=np.int64, count=len(e))
                vals = np.fromiter(e.values(), dtype=np.int64, count=len(e))
                order = np.argsort(keys, kind="stable")
                h.update(keys[order].tobytes())
                h.update(vals[order].tobytes())
    attrs = kvm.mem_attr_private
    h.update(repr((kvm.mmu_invalidate_in_progress, attrs.starts, attrs.ends)).encode())
    for slot in kvm.memslots:
        b = slot.backing
        h.update(repr((slot.id, slot.base_gfn, slot.npages, sorted(b.split_frames),
                       sorted(b.moved.items()))).encode())
        g = slot.gmem
        if g is not None:
            h.update(repr((g.pfn_base, g.npages, g.punched.starts, g.punched.ends)).encode())
    return h.digest()


def _checks(kvm: Any, tdx: Any, mode: str, memo: dict, cache: dict) -> tuple[list, list]:
    """The invariant checkers of ``tdpsim.model.invariants`` (every step or at the end) and,
    for a TD, TLB safety: a vCPU still in the TD must not hold a cached translation, from an
    epoch since tracked, to a private page S-EPT has removed (the BLOCK, TRACK, kick, REMOVE
    protocol); for every VM the shared-EPT TLB checks (``_tlb_step``, ``tlb_flush_owed``)."""
    def invariants(quiescent: bool) -> Optional[tuple[str, str]]:
        bad = check_invariants(kvm, tdx, quiescent)
        return ("INVARIANT", "; ".join(bad[:3])) if bad else None

    def invariants_end() -> Optional[tuple[str, str]]:
        # The checkers cost ~2 ms; many executions end in the same state, so memoize on
        # a digest of everything they read (see ``_memo_key``).
        key = _memo_key(kvm, tdx, cache)
        r = memo.get(key, memo)
        if r is memo:
            r = memo[key] = invariants(True)
        return r

    def tlb() -> Optional[tuple[str, str]]:
        module = tdx.module
        for vcpu in kvm.vcpus:
            v = module.vcpus.get(vcpu.vcpu_id)
            if v is None or not v.in_guest or not v.tlb or v.epoch >= module.td_epoch:
                continue
            for gfn, pfn in v.tlb.items():
                e = module.lookup(gfn << 12)
                # Between TRACK and the kick a blocked page may still be cached; once it is
                # removed (FREE) the host may reuse it.
                if e.state == FREE:
                    return ("TLB", f"vCPU {vcpu.vcpu_id} in guest mode (epoch {v.epoch} < "
                                   f"TD epoch {module.td_epoch}) still caches gfn {gfn:#x} "
                                   f"-> pfn {pfn:#x}, which S-EPT no longer maps")
        return None

    end: list = []
    step: list = []
    if mode == "step":
        step.append(lambda: invariants(False))
    if mode != "off":
        end.append(invariants_end)
    if tdx is not None:
        step.append(tlb)
    step.append(_tlb_step(kvm))
    return end, step


def check_dirty_log(ctx: OpContext) -> Optional[tuple[str, str]]:
    """End check of dirty logging's promise to userspace: a guest write made while slot 0
    logs (after the ioctl enabling it returned) is reported by a KVM_GET_DIRTY_LOG that
    returned after it, or is still set in the bitmap, which the final pass of a live
    migration harvests with the vCPUs stopped.  Otherwise the destination never gets that
    write: the write-protect, flush or fast-page-fault logging it relied on failed."""
    if not ctx.dirty_writes:
        return None
    slot = ctx.kvm.memslots[0]
    bitmap = slot.dirty_bitmap
    for seq, vcpu, gfn in ctx.dirty_writes:
        rel = gfn - slot.base_gfn
        if bitmap[rel >> 3] >> (rel & 7) & 1:
            continue
        if any(h > seq and gfn in gfns for h, gfns in ctx.dirty_harvests):
            continue
        return ("DIRTY_LOG", f"vCPU {vcpu}'s write to gfn {gfn:#x} after dirty logging was "
                             "enabled is in no dirty log harvested after it nor in the "
                             "bitmap: a live migration loses it")
    return None


def _thread_body(ctx: OpContext, tid: int, ops: tuple[OpSpec, ...]) -> Callable[[], Any]:
    def body() -> list[Any]:
        out = []
        for s in ops:
            out.append(OPS[s.op](ctx, **s.args))
            tlb_flush_owed(ctx.kvm, tid, s)
        return out
    return body


def _tlb_step(kvm: Any) -> Callable[[], Optional[tuple[str, str]]]:
    """Step check: an entry of a vCPU's TLB that the step just made stale remembers who
    did it (``sched.cpu`` is the thread that ran the step); one mapped again as it was
    cached is no longer stale."""
    vcpus = kvm.vcpus

    def check() -> Optional[tuple[str, str]]:
        for v in vcpus:
            entries = v.tlb.entries
            if not entries:
                continue
            for gfn, e in entries.items():
                by = e.stale_by
                if by == STALE_NONE:
                    if tlb_entry_is_stale(kvm, e, gfn):
                        e.stale_by = kvm.sched.cpu
                elif by == STALE_RETURNED and not tlb_entry_is_stale(kvm, e, gfn):
                    e.stale_by = STALE_NONE  # mapped again as cached: the next change counts
        return None
    return check


def _tlb_usable(v: Any) -> bool:
    """Can ``v``'s guest use its TLB entries of ``v.root``?  In guest mode, yes; outside,
    unless its next entry flushes or loads a new root first (``vcpu_enter_guest``)."""
    if v.in_guest:
        return True
    return not (KVM_REQ_TLB_FLUSH in v.requests or KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in v.requests
                or v.root is None or v.root.role.invalid)


def tlb_flush_owed(kvm: Any, tid: int, spec: OpSpec) -> None:
    """Op-end check: when an operation returns, every translation its SPTE changes took
    away must be flushed from any vCPU that could still use it (in guest mode, or about to
    enter without a KVM_REQ_TLB_FLUSH pending).  Otherwise the guest keeps reaching a page
    KVM unmapped (and the host may free) — the TLB flush KVM owed was not done.  Entries
    it made stale on vCPUs that cannot use them now are marked: a later hit on one (the
    pending flush got lost) fails in ``tlb.guest_memory_access``."""
    for v in kvm.vcpus:
        if not v.tlb.entries:
            continue
        usable = _tlb_usable(v)
        for gfn, e in v.tlb.entries.items():
            if e.stale_by != tid:
                continue
            stale = tlb_entry_is_stale(kvm, e, gfn)
            e.stale_by = STALE_RETURNED if stale else STALE_NONE
            if stale and usable and e.root is v.root:
                what = "which its SPTE change took away" \
                    if tlb_translation_stale(kvm, e, gfn) else \
                    "through a page table its SPTE change replaced (paging-structure cache)"
                raise MemorySafetyBUG(
                    "TLB", f"{spec.describe()} returned while vCPU {v.vcpu_id} "
                           f"({'in guest mode' if v.in_guest else 'entering without a flush'}) "
                           "still "
                           f"caches gfn {gfn:#x} -> pfn {e.pfn:#x}"
                           f"{' writable' if e.writable else ''}, {what}: the TLB flush KVM "
                           "owed was not done")


# ---------------------------------------------------------------------------- loading

def builtin_dir() -> Path:
    return Path(str(resources.files("tdpsim.explore") / "scenarios"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    cand = builtin_dir() / f"{name_or_path}.toml"
    if cand.exists():
        return cand
    raise ScenarioError(f"unknown scenario {name_or_path!r}: not a file and not one of "
                        f"{', '.join(builtin_names())}")


def load_scenario(name_or_path: str, params: Optional[dict[str, Any]] = None) -> Scenario:
    """Load, apply ``params`` overrides, validate."""
    path = resolve(name_or_path)
    try:
        text = read_user_text(path, "scenario")
        raw = tomllib.loads(text)
    except NotTextError as e:
        raise ScenarioError(str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    sc = parse_scenario(raw, str(path), params or {})
    # read_user_text decodes strict UTF-8, so encoding gives back the file's exact bytes.
    return dataclasses.replace(sc, sha256=hashlib.sha256(text.encode()).hexdigest())


def is_builtin(sc: Scenario) -> bool:
    """Loaded from the built-in directory under its own name."""
    return Path(sc.source) == builtin_dir() / f"{sc.name}.toml"


def parse_param(text: str) -> tuple[str, Any]:
    """``section.key=value`` with TOML value syntax (bare words are strings)."""
    if "=" not in text:
        raise ScenarioError(f"parameter {text!r}: expected section.key=value")
    k, v = text.split("=", 1)
    k = k.strip()
    try:
        value = tomllib.loads(f"x = {v.strip()}")["x"]
    except tomllib.TOMLDecodeError:
        value = v.strip()
    return k, value


def parse_scenario(raw: dict[str, Any], source: str, params: dict[str, Any]) -> Scenario:
    raw = copy.deepcopy(raw)
    for dotted, value in params.items():
        _apply_param(raw, dotted, value, source)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"{source}: unknown top-level key(s) {sorted(unknown)}; "
                            f"expected {sorted(_TOP_KEYS)}")
    name = _req(raw, "name", str, source, "name")
    vm = _vm_config(raw.get("vm", {}), source)
    policy = _dataclass_from(Policy, raw.get("policy", {}), source, "policy")
    explore = raw.get("explore", {})
    _check_table(explore, _EXPLORE_KEYS, source, "explore")
    tdx = raw.get("tdx", {})
    _check_table(tdx, _TDX_KEYS, source, "tdx")
    _check_bounds(source, {"vm": raw.get("vm", {}), "explore": explore, "tdx": tdx})
    if vm.mem_bytes % 4096:
        raise ScenarioError(f"{source}: vm.mem_bytes: expected a multiple of 4096, got "
                            f"{vm.mem_bytes}")
    setup = tuple(_op(o, source, f"setup[{i}]", vm)
                  for i, o in enumerate(_list(raw.get("setup", []), source, "setup")))
    threads_raw = _list(raw.get("threads"), source, "threads")
    if not threads_raw:
        raise ScenarioError(f"{source}: threads: at least one [[threads]] entry is required")
    threads = []
    seen = set()
    for i, t in enumerate(threads_raw):
        where = f"threads[{i}]"
        if not isinstance(t, dict):
            raise ScenarioError(f"{source}: {where}: expected a table")
        extra = set(t) - {"name", "ops"}
        if extra:
            raise ScenarioError(f"{source}: {where}: unknown key(s) {sorted(extra)}; "
                                "expected name, ops")
        tname = _req(t, "name", str, source, f"{where}.name")
        if tname in seen:
            raise ScenarioError(f"{source}: {where}.name: duplicate thread name {tname!r}")
        seen.add(tname)
        ops = _list(t.get("ops"), source, f"{where}.ops")
        if not ops:
            raise ScenarioError(f"{source}: {where}.ops: a thread needs at least one op")
        threads.append((tname, tuple(_op(o, source, f"{where}.ops[{j}]", vm)
                                     for j, o in enumerate(ops))))
    ext = tdx.get("external_ops", "tdx")
    if ext not in ("tdx", "recording"):
        raise ScenarioError(f"{source}: tdx.external_ops: expected 'tdx' (KvmTdx + the TDX "
                            f"module emulator) or 'recording' (RecordingExternalOps), got "
                            f"{ext!r}")
    inv = explore.get("invariants", "end")
    if inv not in ("step", "end", "off"):
        raise ScenarioError(f"{source}: explore.invariants: expected 'step', 'end' or 'off', "
                            f"got {inv!r}")
    return Scenario(
        name=name, summary=raw.get("summary", ""), description=raw.get("description", ""),
        vm=vm, policy=policy, setup=setup, threads=tuple(threads),
        retry_bound=explore.get("retry_bound", 16),
        fail_on_warn=explore.get("fail_on_warn", True),
        max_steps=explore.get("max_steps", 20000), external_ops=ext, invariants=inv,
        private_max_level=tdx.get("private_max_level", 2), params=dict(params),
        source=source)


def _apply_param(raw: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if parts[0] not in _TOP_KEYS or parts[0] in ("setup", "threads"):
        raise ScenarioError(f"{source}: parameter {dotted!r}: only name, vm.*, policy.*, "
                            "explore.*, tdx.* can be overridden")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ScenarioError(f"{source}: parameter {dotted!r}: {p} is not a table")
    node[parts[-1]] = value


def _check_bounds(source: str, tables: dict[str, dict]) -> None:
    for dotted, (lo, hi) in _INT_BOUNDS.items():
        section, key = dotted.split(".")
        v = tables[section].get(key)
        if isinstance(v, int) and not lo <= v <= hi:
            raise ScenarioError(f"{source}: {dotted}: expected an integer between {lo} and "
                                f"{hi}, got {v}")


def _req(table: dict, key: str, typ: type, source: str, where: str) -> Any:
    if key not in table:
        raise ScenarioError(f"{source}: {where}: missing (expected {typ.__name__})")
    v = table[key]
    if not isinstance(v, typ):
        raise ScenarioError(f"{source}: {where}: expected {typ.__name__}, got {v!r}")
    return v


def _list(v: Any, source: str, where: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ScenarioError(f"{source}: {where}: expected a list/array of tables")
    return v


def _check_table(table: Any, schema: dict[str, type], source: str, where: str) -> None:
    if not isinstance(table, dict):
        raise ScenarioError(f"{source}: {where}: expected a table")
    for k, v in table.items():
        if k not in schema:
            raise ScenarioError(f"{source}: {where}.{k}: unknown key; expected one of "
                                f"{sorted(schema)}")
        if not isinstance(v, schema[k]) or (schema[k] is int and isinstance(v, bool)):
            raise ScenarioError(f"{source}: {where}.{k}: expected {schema[k].__name__}, "
                                f"got {v!r}")


def _vm_config(table: Any, source: str) -> VmConfig:
    """The ``[vm]`` table; ``kernel = "6.1"`` names the KernelProfile the VM runs under."""
    if not isinstance(table, dict) or "kernel" not in table:
        return _dataclass_from(VmConfig, table, source, "vm")
    table = dict(table)
    name = table.pop("kernel")
    try:
        profile = get_profile(str(name))
    except UnknownKernelProfile as e:
        raise ScenarioError(f"{source}: vm.kernel: {e}") from None
    return dataclasses.replace(_dataclass_from(VmConfig, table, source, "vm"), profile=profile)


def _dataclass_from(cls: type, table: Any, source: str, where: str) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"{source}: {where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in table.items():
        if k not in fields:
            raise ScenarioError(f"{source}: {where}.{k}: unknown key; expected one of "
                                f"{sorted(fields)}")
        default = fields[k].default
        if default is not dataclasses.MISSING and type(default) is not type(v):
            raise ScenarioError(f"{source}: {where}.{k}: expected {type(default).__name__}, "
                                f"got {v!r}")
    try:
        return cls(**table)
    except (TypeError, ValueError) as e:
        raise ScenarioError(f"{source}: {where}: {e}") from None


def _op(o: Any, source: str, where: str, vm: VmConfig) -> OpSpec:
    if not isinstance(o, dict):
        raise ScenarioError(f"{source}: {where}: expected a table like {{op = \"fault\", ...}}")
    name = o.get("op")
    if not isinstance(name, str) or name not in OPS:
        raise ScenarioError(f"{source}: {where}.op: unknown op {name!r}; expected one of "
                            f"{sorted(OPS)}")
    params = op_params(name)
    args = {k: v for k, v in o.items() if k != "op"}
    for k, v in args.items():
        if k not in params:
            raise ScenarioError(f"{source}: {where}.{k}: op {name!r} takes no argument {k!r}; "
                                f"it takes {sorted(params)}")
        ann = params[k].annotation
        want = {"int": int, "bool": bool, "str": str, "Optional[bool]": bool}.get(str(ann))
        if want is not None and (not isinstance(v, want)
                                 or (want is int and isinstance(v, bool))):
            raise ScenarioError(f"{source}: {where}.{k}: expected {want.__name__}, got {v!r}")
        if want is int and not 0 <= v <= _OP_INT_MAX:
            raise ScenarioError(f"{source}: {where}.{k}: expected an integer between 0 and "
                                f"{_OP_INT_MAX:#x}, got {v}")
    for p in params.values():
        if p.default is p.empty and p.name not in args:
            raise ScenarioError(f"{source}: {where}: op {name!r} needs argument {p.name!r}")
    if "start" in args and "end" in args and args["start"] >= args["end"]:
        raise ScenarioError(f"{source}: {where}: expected start < end (a gfn range), got "
                            f"[{args['start']:#x}, {args['end']:#x})")
    if "vcpu" in args and not 0 <= args["vcpu"] < vm.nr_vcpus:
        raise ScenarioError(f"{source}: {where}.vcpu: {args['vcpu']} is not a vCPU of a VM "
                            f"with vm.nr_vcpus = {vm.nr_vcpus}")
    return OpSpec(name, args)
