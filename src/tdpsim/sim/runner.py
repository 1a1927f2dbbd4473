"""Run a workload against the model under a policy; compare policies side by side.

Not a kernel file.  ``simulate`` builds the guest (``guest.make_driver``), then turns each
phase into engine processes — one per participating vCPU, plus periodic workers such as the
NX recovery thread — and runs them in virtual time.  Phases are sequential (a barrier
between them, like "firmware, then kernel"); inside a phase vCPUs interleave by virtual
time with the engine's seeded RNG choosing addresses, so a run is a pure function of
(workload, policy, seed).

A VM marked bugged (``KVM_BUG_ON``) or dead stops the run; the result records where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from tdpsim.cost import DEFAULT_PARAMS, CostParams, estimate, translation
from tdpsim.model.policy import Policy
from tdpsim.model.profile import DEFAULT_PROFILE, KernelProfile

from .engine import Engine
from .guest import UNIT_PAGES, Driver, GuestError, TdDriver, VmDriver, make_driver
from .metrics import Metrics, PhaseRecord, compose, diff, huge_coverage
from .policies import resolve_policy
from .workload import PAGE, Phase, Workload

# progress(phase_index, nr_phases, phase_name, done, total)
Progress = Callable[[int, int, str, int, int], None]
SAMPLES_PER_PHASE = 120


@dataclass
class RunResult:
    workload: str
    preset: str
    policy: dict[str, Any]
    seed: int
    vm: dict[str, Any]
    phases: list[PhaseRecord]
    totals: dict[str, int]
    samples: list[Any]
    status: str = "ok"
    cost: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> components
    coverage: dict[str, float] = field(default_factory=dict)
    translation: dict[str, float] = field(default_factory=dict)
    cost_params: str = "default"
    steps: int = 0
    virtual_us: float = 0.0
    kernel: str = DEFAULT_PROFILE.name  # the KernelProfile the model ran as

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def phase(self, name: str) -> PhaseRecord:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def stage_total(self, key: str, stage: str) -> int:
        """A counter summed over the phases of one stage (``build``/``firmware``/
        ``kernel``), e.g. 2M mappings "from kernel boot to login"."""
        return sum(p.counters.get(key, 0) for p in self.phases if p.stage == stage)

    def total_cost_us(self) -> float:
        return sum(c["total"] for c in self.cost.values())


class _Run:
    """State of one simulation: engine, driver, metrics, the current phase."""

    def __init__(self, wl: Workload, policy: Policy, seed: int, tracer, progress,
                 profile: KernelProfile) -> None:
        self.wl = wl
        self.engine = Engine(seed)
        self.metrics = Metrics()
        self.driver: Driver = make_driver(wl.vm, policy, compose(self.metrics.observe, tracer),
                                          profile)
        self.progress = progress
        self.phase_name = ""
        self.phase_index = 0
        self.done = 0
        self.total = 1
        self.sample_every = 1
        self.failure: Optional[str] = None

    # one unit of work finished
    def tick(self) -> None:
        self.done += 1
        if self.done % self.sample_every == 0:
            self.metrics.sample(self.engine.now, self.phase_name, self.driver)
        if self.progress is not None and (self.done % 64 == 0 or self.done == self.total):
            self.progress(self.phase_index, len(self.wl.phases), self.phase_name,
                          self.done, self.total)

    def guarded(self, gen: Iterator[float]) -> Iterator[float]:
        """Stop the whole run when the guest can't go on (VM bugged or dead)."""
        try:
            yield from gen
        except GuestError as e:
            self.fail(str(e))

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = f"VM bugged/dead in phase {self.phase_name!r}: {why}"
        self.engine.stop(self.failure)


# ------------------------------------------------------------------------- phase handlers
# Each returns (total work units, list of (vcpu, generator)).

def _split(items: list[Any], vcpus: tuple[int, ...]) -> list[tuple[int, list[Any]]]:
    """Round-robin distribution of work over vCPUs."""
    return [(v, items[i::len(vcpus)]) for i, v in enumerate(vcpus)]


def _phase_td_build(r: _Run, ph: Phase):
    d = r.driver
    assert isinstance(d, TdDriver)

    def gen():
        for sec in ph["sections"]:
            d.build(sec.start, sec.size)
            r.tick()
            yield ph["think_us"] * sec.npages
        d.finalize()
        r.tick()
    return len(ph["sections"]) + 1, [(0, gen())]


def _lazy_units(r: _Run, ph: Phase) -> list[int]:
    """Linux's lazy accept: the next ``mib`` worth of untouched 2 MB units, in the order
    the page allocator hands them out (``order``)."""
    d = r.driver
    want = ph["mib"] // (UNIT_PAGES * PAGE)
    first = -(-ph["start_mib"] // (UNIT_PAGES * PAGE))
    last = r.wl.vm.memory_bytes // (UNIT_PAGES * PAGE)
    order = ph["order"]
    out: list[int] = []
    if order == "random":
        cands = list(range(first, last))
        r.engine.rng.shuffle(cands)
        it: Any = iter(cands)
    elif order == "descending":
        it = iter(range(last - 1, first - 1, -1))
    else:
        it = iter(range(first, last))
    for u in it:
        if len(out) >= want:
            break
        if d.accepted.unit_state(u) == "none" and d.unit_is_private(u):
            out.append(u)
    return out


def _phase_accept(r: _Run, ph: Phase):
    d = r.driver
    think = ph["think_us"]
    vcpus = ph["vcpus"]
    work: list[tuple[str, int, int]] = []  # (op, gfn/unit, npages)
    if ph["complete_partial"]:
        for u in d.partial_units():
            work.append(("unit", u, 0))
    if ph["ranges"] is not None:
        for rg in ph["ranges"]:
            if ph["level"] == "4K":
                work.extend(("4k", g, 1) for g in range(rg.start_gfn, rg.start_gfn + rg.npages))
            else:
                g, end = rg.start_gfn, rg.start_gfn + rg.npages
                while g < end:  # one accept_memory call per 2 MB unit piece
                    n = min(end, (g // UNIT_PAGES + 1) * UNIT_PAGES) - g
                    work.append(("range", g, n))
                    g += n
    elif ph["mib"] is not None:
        work.extend(("unit", u, 0) for u in _lazy_units(r, ph))

    def gen(vcpu: int, items: list[tuple[str, int, int]]):
        for op, a, n in items:
            if op == "4k":
                d.accept_4k(vcpu, a)
            elif op == "range":
                d.accept_range(vcpu, a, n)
            else:
                d.accept_unit(vcpu, a)
            r.tick()
            yield think
    return len(work), [(v, gen(v, items)) for v, items in _split(work, vcpus)]


def _phase_touch(r: _Run, ph: Phase):
    d = r.driver
    rng = r.engine.rng
    region = ph["region"]
    npages = region.npages
    stride = ph["stride_kib"] // PAGE
    hot = (ph["hot_mib"] or 0) // PAGE
    wf, xf = ph["write_fraction"], ph["exec_fraction"]
    shared = ph["shared"]
    think = ph["think_us"]
    vcpus = ph["vcpus"]
    total = ph["accesses"]
    counter = iter(range(total))
    live = {"n": len(vcpus)}

    def pick(i: int) -> int:
        pat = ph["pattern"]
        if pat == "sequential":
            return (i * stride) % npages
        if pat == "random" or not hot or hot >= npages:
            return rng.randrange(npages)
        if rng.random() < ph["hot_probability"]:
            return rng.randrange(hot)
        return hot + rng.randrange(npages - hot)

    if shared and isinstance(d, TdDriver):
        # The region is shared memory: convert whatever is still private first.
        g = region.start_gfn
        end = g + npages
        while g < end:
            n = min(end, (g // UNIT_PAGES + 1) * UNIT_PAGES) - g
            if d.kvm.kvm_mem_is_private(g):
                d.to_shared(vcpus[0], g, n, discard=False)
            g += n

    def gen(vcpu: int):
        for i in counter:  # shared iterator: vCPUs take the next access in time order
            exec_ = rng.random() < xf
            write = not exec_ and rng.random() < wf
            gfn = region.start_gfn + pick(i)
            d.access(vcpu, gfn * PAGE, write, exec_, shared)
            r.tick()
            yield think
        live["n"] -= 1

    procs: list[tuple[int, Any]] = [(v, gen(v)) for v in vcpus]
    period = ph["nx_recovery_period_us"]
    if period > 0:
        ratio = ph["nx_recovery_ratio"]

        def worker():
            while live["n"] > 0:
                yield period
                if live["n"] > 0:
                    d.nx_recovery(ratio)
        procs.append((-1, worker()))
    return total, procs


def _phase_convert(r: _Run, ph: Phase):
    d = r.driver
    assert isinstance(d, TdDriver)
    rng = r.engine.rng
    unit = ph["unit_kib"] // PAGE
    if ph["ranges"] is not None:
        starts = [rg.start_gfn + k * unit for rg in ph["ranges"]
                  for k in range(max(1, rg.npages // unit))]
    else:
        region = ph["region"]
        starts = [region.start_gfn + k * unit for k in range(max(1, region.npages // unit))]
    nunits = len(starts)
    think = ph["think_us"]
    to = ph["to"]
    times = ph["times"]
    counter = iter(range(times))

    def touch_shared(vcpu: int, gfn: int, n: int) -> None:
        g, end = gfn, gfn + n
        while g < end:
            d.access(vcpu, g * PAGE, True, False, True)
            lvl = _mapped_shared_level(d, vcpu, g)
            g = min(end, (g | (UNIT_PAGES - 1)) + 1) if lvl >= 2 else g + 1

    def gen(vcpu: int):
        for i in counter:
            k = i % nunits if ph["pattern"] == "sequential" else rng.randrange(nunits)
            gfn = starts[k]
            private = d.is_private(gfn)
            if to in ("shared", "roundtrip") and private:
                d.to_shared(vcpu, gfn, unit, ph["discard"])
                if ph["touch_shared"]:
                    touch_shared(vcpu, gfn, unit)
                if to == "roundtrip":
                    d.to_private(vcpu, gfn, unit)
            elif to in ("private", "roundtrip") and not private:
                d.to_private(vcpu, gfn, unit)
            r.tick()
            yield think
    return times, [(v, gen(v)) for v in ph["vcpus"]]


def _mapped_shared_level(d: TdDriver, vcpu: int, gfn: int) -> int:
    from .guest import mapped_level
    return mapped_level(d.kvm, d.kvm.vcpus[vcpu].root, gfn, False, False)


def _phase_punch_hole(r: _Run, ph: Phase):
    d = r.driver
    assert isinstance(d, TdDriver)

    def gen():
        for rg in ph["ranges"]:
            if ph["convert_first"] and d.is_private(rg.start_gfn):
                d.to_shared(0, rg.start_gfn, rg.npages, discard=False)
            d.punch_hole(rg.start_gfn, rg.npages)
            r.tick()
            yield ph["think_us"]
    return len(ph["ranges"]), [(0, gen())]


def _phase_dirty_log(r: _Run, ph: Phase):
    d = r.driver
    assert isinstance(d, VmDriver)

    def gen():
        d.set_dirty_log(ph["enable"])
        r.tick()
        yield ph["think_us"]
    return 1, [(0, gen())]


def _phase_nx_recovery(r: _Run, ph: Phase):
    d = r.driver

    def gen():
        for _ in range(ph["runs"]):
            d.nx_recovery(ph["ratio"])
            r.tick()
            yield ph["think_us"]
    return ph["runs"], [(0, gen())]


def _with_task(gen: Iterator[float], vcpu: int, hook: Callable[[int], None]):
    while True:
        hook(vcpu)
        try:
            wait = next(gen)
        except StopIteration:
            return
        yield wait


HANDLERS = {
    "td_build": _phase_td_build, "accept": _phase_accept, "touch": _phase_touch,
    "convert": _phase_convert, "punch_hole": _phase_punch_hole,
    "dirty_log": _phase_dirty_log, "nx_recovery": _phase_nx_recovery,
}


# ------------------------------------------------------------------------------ entry points

def simulate(wl: Workload, preset: str = "hp3-seed", seed: Optional[int] = None, *,
             tracer: Optional[Callable[[Any], None]] = None,
             progress: Optional[Progress] = None,
             params: CostParams = DEFAULT_PARAMS,
             policy: Optional[Policy] = None,
             task_hook: Optional[Callable[[int], None]] = None,
             instrument: Optional[Callable[[Driver], None]] = None,
             profile: KernelProfile = DEFAULT_PROFILE) -> RunResult:
    """Run ``wl`` under the named policy preset (or an explicit ``policy``).

    ``tracer`` also receives every model event (e.g. a trace emitter); ``task_hook(vcpu)``
    is called before each step of a process (vcpu -1: a host worker thread) so a tracer
    can attribute events to the right task; ``instrument(driver)`` runs once the guest
    exists, before the first phase (``tdpsim equiv`` hangs its recorder there)."""
    seed = wl.seed if seed is None else seed
    pol = policy if policy is not None else resolve_policy(preset, wl.policy)
    run = _Run(wl, pol, seed, tracer, progress, profile)
    if instrument is not None:
        instrument(run.driver)
    eng, d, m = run.engine, run.driver, run.metrics
    records: list[PhaseRecord] = []
    before = m.snapshot(d)
    m.sample(0.0, "start", d)
    for i, ph in enumerate(wl.phases):
        run.phase_index, run.phase_name = i, ph.name
        start = eng.now
        if run.failure is not None:
            records.append(PhaseRecord(ph.name, ph.kind, start, start, {}, skipped=True,
                                       stage=ph["stage"]))
            continue
        try:
            if ph.kind != "td_build" and isinstance(d, TdDriver) and not d.tdx.is_td_runnable():
                d.finalize()  # a TD without an explicit build phase: empty image
            total, procs = HANDLERS[ph.kind](run, ph)
        except GuestError as e:
            run.fail(str(e))
            total, procs = 0, []
        run.done, run.total = 0, max(1, total)
        run.sample_every = max(1, total // SAMPLES_PER_PHASE)
        for vcpu, gen in procs:
            if task_hook is not None:
                gen = _with_task(gen, vcpu, task_hook)
            # Stagger vCPUs deterministically so the first steps do not all tie.
            eng.process(run.guarded(gen), delay=0.001 * max(vcpu, 0),
                        priority=0 if vcpu >= 0 else 1)
        eng.run()
        m.sample(eng.now, ph.name, d)
        after = m.snapshot(d)
        records.append(PhaseRecord(ph.name, ph.kind, start, eng.now, diff(after, before),
                                   stage=ph["stage"]))
        before = after
        if progress is not None:
            progress(i, len(wl.phases), ph.name, run.total, run.total)
    totals = m.snapshot(d)
    status = run.failure or "ok"
    if status == "ok" and (d.kvm.vm_bugged or d.kvm.vm_dead):
        status = "VM bugged/dead: " + (d.kvm.bugs[0].message if d.kvm.bugs else "?")
    cov = huge_coverage(totals, wl.vm.memory_bytes)
    cost = {p.name: estimate(p.counters, params, wl.vm.vcpus) for p in records if not p.skipped}
    return RunResult(
        workload=wl.name, preset=preset if policy is None else "custom",
        policy=pol.as_dict(), seed=seed,
        vm={"kind": wl.vm.kind, "vcpus": wl.vm.vcpus,
            "memory_gib": wl.vm.memory_bytes / (1 << 30)},
        phases=records, totals=totals, samples=m.samples, status=status, cost=cost,
        coverage=cov, translation=translation(cov["huge_share_of_mapped"], params),
        cost_params=params.name, steps=eng.steps, virtual_us=eng.now, kernel=profile.name)


def compare(wl: Workload, presets: list[str], seed: Optional[int] = None, *,
            progress: Optional[Callable[[str], Optional[Progress]]] = None,
            params: CostParams = DEFAULT_PARAMS, jobs: int = 1,
            profile: KernelProfile = DEFAULT_PROFILE) -> list[RunResult]:
    """The same workload and seed under each preset, in the order given.  With ``jobs`` > 1
    the presets run in that many worker processes (no progress callbacks then); the
    results are the same either way, since every run is a pure function of its inputs."""
    if jobs > 1 and len(presets) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=min(jobs, len(presets))) as pool:
            futures = [pool.submit(simulate, wl, p, seed, params=params, profile=profile)
                       for p in presets]
            return [f.result() for f in futures]
    out = []
    for p in presets:
        out.append(simulate(wl, p, seed, progress=progress(p) if progress else None,
                            params=params, profile=profile))
    return out
