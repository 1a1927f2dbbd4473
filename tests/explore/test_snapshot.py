"""Setup snapshots and the cheaper end-of-run bookkeeping change nothing observable.

Restoring the post-setup state from the per-process snapshot must give executions identical to
re-running the setup every time (same decisions, steps, footprints, trace and state hashes,
failures, thread results, recorded traces), for every builtin scenario, both policies, both
external-ops back ends and every strategy.  The restored graph must be independent of the
original (closures re-bound, nothing mutable shared), the coverage digest must keep its exact
value, and the invariant memo must return what running the checkers returns.
"""

from __future__ import annotations

import array
import dataclasses
import gc
import hashlib
import types

import pytest

from tdpsim.explore import (
    DfsScheduler, DporScheduler, PctScheduler, RandomScheduler, builtin_names,
    load_scenario,
)
from tdpsim.explore.engine import Engine, state_digest, table_digests
from tdpsim.explore.runner import run_one
from tdpsim.explore.scenario import _memo_key
from tdpsim.explore.snapshot import Snapshot
from tdpsim.model.invariants import check_invariants
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.spte import is_last_spte, spte_to_pfn

SHADOW_NONPRESENT_VALUE = DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE

def _fits(name: str, pol: str, ext: str) -> bool:
    """The variants that mean something: mirror_promotion only matters with mirror roots,
    and a TD guest (ACCEPT) needs the TDX glue rather than RecordingExternalOps."""
    sc = load_scenario(name)
    ops = {o.op for o in sc.setup} | {o.op for _, t in sc.threads for o in t}
    if pol == "unpatched" and not sc.vm.tdx:
        return False
    return not (ext == "recording" and "accept" in ops)


VARIANTS = [(name, pol, ext) for name in builtin_names()
            for pol in ("disallowed", "unpatched") for ext in ("tdx", "recording")
            if _fits(name, pol, ext)]


def _params(pol: str, ext: str) -> dict:
    p = {"policy.mirror_promotion": pol}
    if ext == "recording":
        p["tdx.external_ops"] = "recording"
    return p


def _observable(r) -> tuple:
    return (tuple(r.decisions), r.failure, r.steps, r.pruned, tuple(r.events), r.trace_hash,
            r.state_hash, repr(r.results), [dataclasses.astuple(s) for s in r.trace])


# A budget of steps as well as of executions: a long scenario (roots_invalidate*: ~9k
# steps each, invariants after every step) needs only a few executions to cover the
# snapshot, and 25 of each strategy would cost minutes.
STEP_BUDGET = 20_000


def _run_all(sc, sched, n: int, record: bool = False) -> list[tuple]:
    out: list[tuple] = []
    steps = 0
    while len(out) < n and steps < STEP_BUDGET and sched.new_execution():
        r = run_one(sc, sched, record=record)
        steps += r.steps
        out.append(_observable(r))
    return out


STRATEGIES = {
    "random": lambda: RandomScheduler(11, 10**9),
    "pct": lambda: PctScheduler(5, 3, 10**9),
    "dfs": lambda: DfsScheduler(2, 10**9),
    "dpor": lambda: DporScheduler(10**9),
}


@pytest.mark.parametrize("name,pol,ext", VARIANTS)
def test_restored_executions_identical_to_fresh_setup(name, pol, ext):
    snap = load_scenario(name, _params(pol, ext))
    fresh = dataclasses.replace(snap, setup_snapshot=False)
    assert snap.setup_snapshot and not fresh.setup_snapshot
    for label, make in STRATEGIES.items():
        a = _run_all(fresh, make(), 25)
        b = _run_all(snap, make(), 25)
        assert a == b, f"{label}: snapshot executions differ from fresh-setup executions"
    # Recorded traces (step kinds, keys, model functions, SPTE before/after) too.
    assert _run_all(fresh, RandomScheduler(3, 10**9), 3, record=True) == \
        _run_all(snap, RandomScheduler(3, 10**9), 3, record=True)


def test_failures_identical_from_snapshot():
    """The seed race: same failing executions, same failure kind/message/step/thread."""
    snap = load_scenario("seed_promotion", {"policy.mirror_promotion": "unpatched"})
    fresh = dataclasses.replace(snap, setup_snapshot=False)
    a = _run_all(fresh, PctScheduler(0, 3, 10**9), 60)
    b = _run_all(snap, PctScheduler(0, 3, 10**9), 60)
    assert a == b
    assert any(x[1] is not None and x[1].kind == "KVM_BUG" for x in a)


def _reachable(root) -> dict[int, object]:
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (type, types.ModuleType)):
            continue
        if isinstance(o, types.FunctionType) and o.__closure__ is None:
            continue  # code and globals are shared by design
        seen[id(o)] = o
        refs = gc.get_referents(o)
        if isinstance(o, types.FunctionType):
            refs = [o.__closure__, o.__defaults__, o.__kwdefaults__]
        stack.extend(refs)
    return seen


_IMMUTABLE = (int, float, str, bytes, bool, type(None), frozenset, tuple, types.CodeType,
              types.BuiltinFunctionType)


def test_restored_graph_is_independent_of_the_original():
    sc = load_scenario("seed_2vcpu", {"policy.mirror_promotion": "disallowed"})
    ctx = sc._setup()
    snap = Snapshot(ctx)
    a, b = snap.restore(), snap.restore()
    orig = _reachable(ctx)
    # Frozen dataclass values are shared on purpose, and only when nothing in them can change.
    by_ref = {id(o) for o in snap.shared}
    assert {type(o).__name__ for o in snap.shared} >= {"Policy", "SeamcallRecord"}
    for copy_ in (a, b):
        shared = [o for i, o in _reachable(copy_).items()
                  if i in orig and not isinstance(o, _IMMUTABLE) and i not in by_ref]
        assert not shared, f"restored graph shares mutable objects: {shared[:5]}"
    # One SchedPoints stays shared by the VM, its locks, RCU and the TDX module.
    kvm = a.kvm
    assert kvm.mmu_lock._sp is kvm.sched and kvm.rcu._sp is kvm.sched
    assert a.tdx.module.sched is kvm.sched
    # The lockdep closure reports to the restored VM, not the original.
    assert kvm.mmu_lock.lockdep_report.__closure__[0].cell_contents is kvm
    n = len(ctx.kvm.warnings)
    kvm.mmu_lock.lockdep_assert_held_write()
    assert len(ctx.kvm.warnings) == n and kvm.warnings[-1].function == "lockdep"
    # Mutating one restore leaves the next one untouched.
    a.kvm.next_pt_pfn += 7
    assert snap.restore().kvm.next_pt_pfn == ctx.kvm.next_pt_pfn


def test_copied_containers_keep_sharing_and_stay_private():
    """Flat containers come back as copies of a template: one per restore, shared inside a
    restore where the original was shared, the snapshot unchanged by later mutations."""
    big = {i: i * 3 for i in range(40)}
    small = {1: 2}
    nested = {i: [i] for i in range(40)}  # not flat: pickled as usual
    root = {"a": big, "b": big, "buf": bytearray(b"xy"), "arr": array.array("Q", [5, 6]),
            "small": small, "nested": nested}
    snap = Snapshot(root)
    assert len(snap.copiers) == 3
    big[0] = -1
    root["buf"][0] = 0
    r1, r2 = snap.restore(), snap.restore()
    assert r1["a"] is r1["b"] and r1["a"] is not r2["a"]
    assert r1["a"] == {i: i * 3 for i in range(40)} and r1["buf"] == bytearray(b"xy")
    assert r1["arr"] == array.array("Q", [5, 6]) and r1["arr"] is not r2["arr"]
    r1["a"][1] = 0
    r1["buf"][1] = 0
    r1["arr"][0] = 0
    assert r2["a"][1] == 3 and r2["buf"] == bytearray(b"xy") and r2["arr"][0] == 5
    assert snap.restore()["a"][1] == 3 and r1["nested"] == nested


def _reference_state_digest(kvm) -> str:
    """The digest as it was computed before the numpy scan (kept here as the reference)."""
    def table(h, by_pfn, sp):
        level = sp.role.level
        if level == 1:
            h.update(sp.spt.tobytes())
            return
        h.update(b"L%d" % level)
        for i, spte in enumerate(sp.spt):
            if spte == SHADOW_NONPRESENT_VALUE:
                continue
            child = None if is_last_spte(spte, level) else by_pfn.get(spte_to_pfn(spte))
            h.update(b"%d:" % i)
            if child is not None:
                table(h, by_pfn, child)
            else:
                h.update(spte.to_bytes(8, "little"))

    h = hashlib.blake2b(digest_size=8)
    for root in kvm.tdp_mmu_roots:
        table(h, kvm.sp_by_pfn, root)
    h.update(repr((kvm.mem_attr_private.starts, kvm.mem_attr_private.ends,
                   kvm.stat.pages, [b.function for b in kvm.bugs])).encode())
    return h.hexdigest()


@pytest.mark.parametrize("name", builtin_names())
def test_state_digest_unchanged_and_memo_exact(name):
    for pol in ("disallowed", "unpatched"):
        if pol == "unpatched" and not _fits(name, pol, "tdx"):
            continue
        sc = load_scenario(name, {"policy.mirror_promotion": pol})
        sched = RandomScheduler(2, 12)
        while sched.new_execution():
            world = sc.build()
            r = Engine(world, sched, max_steps=sc.max_steps).run()
            kvm, tdx = world.kvm, world.tdx
            assert r.state_hash == state_digest(kvm) == _reference_state_digest(kvm)
            if r.failure is None:
                # What the memo returned is what the checkers say about this state.
                bad = check_invariants(kvm, tdx, True)
                expect = ("INVARIANT", "; ".join(bad[:3])) if bad else None
                assert sc._memo[_memo_key(kvm, tdx, {})] == expect


def test_memo_key_covers_what_the_checkers_read():
    sc = load_scenario("seed_2vcpu", {"policy.mirror_promotion": "disallowed"})
    sched = RandomScheduler(0, 1)
    sched.new_execution()
    world = sc.build()
    Engine(world, sched).run()
    kvm, tdx = world.kvm, world.tdx
    base = _memo_key(kvm, tdx, {})
    assert _memo_key(kvm, tdx, {"digests": table_digests(kvm)}) == base
    m = tdx.module
    m.unflushed.add(0x1234)  # read by _check_private_pages_alive
    assert _memo_key(kvm, tdx, {}) != base
    m.unflushed.discard(0x1234)
    assert _memo_key(kvm, tdx, {}) == base
    pfn, v = next(iter(m.pamt._e.items()))  # read by module_violations via pamt.find
    m.pamt._e[pfn] = v ^ 0x10
    assert _memo_key(kvm, tdx, {}) != base
    m.pamt._e[pfn] = v
    root = next(r for r in kvm.tdp_mmu_roots if r.role.is_mirror)
    child = next(sp for sp in kvm.sp_by_pfn.values() if sp.parent is root)
    child.external_spt, old = (child.external_spt or 0) + 1, child.external_spt
    assert _memo_key(kvm, tdx, {}) != base  # mirror table vs S-EPT pfn
    child.external_spt = old
    assert _memo_key(kvm, tdx, {}) == base
