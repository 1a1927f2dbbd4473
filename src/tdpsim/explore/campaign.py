"""Campaigns: one exploration split into deterministic chunks, run on local processes
(``jobs``) or Ray, checkpointed after every chunk so a killed campaign resumes without losing
or repeating work.

Random and PCT campaigns are split by execution index (execution i always uses the stream
``(seed, i)``), so chunk [a, b) gives the same executions on any worker.  DFS is split by its
first decision (one chunk per thread that can run first).  DPOR is split into the subtrees
of its first ``split_depth`` steps: at those levels every runnable thread that is not asleep
is a branch (explored in thread order, each explored one then sleeping for its later
siblings, as the serial algorithm does at any node), and below them each subtree is explored
by optimal DPOR on its own (``DporScheduler(prefix=...)``).  A subtree needs only its prefix
and the footprints of its earlier siblings' first events, which it measures with a few
one-step probe runs (not counted as executions), so every chunk is a pure function of
(spec, chunk) and a campaign gives the same executions, states and failures serially, with
``jobs`` or on Ray.  A checkpoint is JSON written with an atomic rename: the finished chunk
ids, the totals and the first failure found.  Workers share nothing; each rebuilds the
scenario from its name and parameters.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import itertools

from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError

from ..userfile import NotTextError, clip_repr, read_user_text, validation_message
from .engine import Engine, ExplorerError, Scheduler, StepInfo
from .runner import explore
from .scenario import Scenario, load_scenario
from .schedule import Schedule, atomic_write
from .strategies import (
    DfsScheduler, DporScheduler, PctScheduler, RandomScheduler,
)
from .strategies.dpor import dependent, normalise

STRATEGIES = ("random", "pct", "dfs", "dpor")


@dataclass(frozen=True)
class CampaignSpec:
    scenario: str
    params: dict[str, Any]
    strategy: str = "pct"
    executions: int = 1000
    seed: int = 0
    depth: int = 3
    preemption_bound: Optional[int] = 2
    chunk: int = 250
    stop_on_failure: bool = True
    split_depth: int = 2  # DPOR: subtrees of the first split_depth steps are the chunks

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ExplorerError(f"unknown strategy {self.strategy!r}; expected one of "
                                f"{', '.join(STRATEGIES)}")
        if self.executions <= 0 or self.chunk <= 0:
            raise ExplorerError("executions and chunk must be positive")
        if self.split_depth < 0:
            raise ExplorerError("split_depth must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def chunks(self) -> list[tuple]:
        if self.strategy in ("random", "pct"):
            return [("range", a, min(a + self.chunk, self.executions))
                    for a in range(0, self.executions, self.chunk)]
        n = len(load_scenario(self.scenario, self.params).threads)
        if self.strategy == "dfs":
            return [("first", tid) for tid in range(n)]
        # Subtrees that do not exist (a thread that cannot run, or sleeps) are empty chunks.
        return [("prefix",) + p for p in itertools.product(range(n), repeat=self.split_depth)]


@dataclass
class ChunkResult:
    chunk: tuple
    executions: int
    steps: int
    pruned: int
    seconds: float
    states: list[str]
    traces: list[str]
    exhausted: bool
    failure: Optional[dict[str, Any]] = None  # schedule JSON of the first failure
    failures: list[str] = field(default_factory=list)  # distinct failures, sorted


class _Probe(Scheduler):
    """Follow ``path`` and stop one step after it: the runnable threads at every level and
    the footprint of every step taken."""

    needs_footprints = True

    def __init__(self, path: tuple[int, ...]) -> None:
        self.path = path
        self.runnable: list[list[int]] = []

    def new_execution(self) -> bool:
        return True

    def choose(self, runnable, info: StepInfo):
        d = len(self.runnable)
        self.runnable.append(list(runnable))
        if d < len(self.path) and self.path[d] in runnable:
            return self.path[d]
        return None


def _probe(sc: Scenario, path: tuple[int, ...]) -> Optional[tuple[list, list]]:
    """(runnable at each level 0..len(path), footprints of the path's steps), or None when
    the path cannot be followed."""
    probe = _Probe(path)
    res = Engine(sc.build(), probe, max_steps=sc.max_steps).run()
    if len(res.events) < len(path):
        return None
    return probe.runnable, [fp for _, fp, _ in res.events]


def dpor_subtree(sc: Scenario, prefix: tuple[int, ...], max_executions: int
                 ) -> Optional[DporScheduler]:
    """The DPOR scheduler for one subtree of the split, or None when the serial
    exploration has no such subtree."""
    got = _probe(sc, prefix)
    if got is None:
        return None
    runnable, fps = got
    memo: dict = {}
    sleeps: list[dict] = []
    sleep: dict = {}
    for d, t in enumerate(prefix):
        if d:
            last = normalise(fps[d - 1], memo)[0]
            sleep = {q: fp for q, fp in sleep.items() if not dependent(fp, last)}
        if t in sleep:
            return None  # covered by an earlier sibling's subtree
        sleep = dict(sleep)
        for q in runnable[d]:
            if q < t and q not in sleep:
                sib = _probe(sc, prefix[:d] + (q,))
                assert sib is not None
                sleep[q] = normalise(sib[1][d], memo)[0]
        sleeps.append(sleep)
    return DporScheduler(max_executions, prefix=prefix, prefix_sleep=sleeps)


def run_chunk(spec: CampaignSpec, chunk: tuple) -> ChunkResult:
    """Run one chunk; pure function of (spec, chunk) — safe in any process."""
    sc = load_scenario(spec.scenario, spec.params)
    if chunk[0] == "range":
        _, a, b = chunk
        if spec.strategy == "random":
            sched = RandomScheduler(spec.seed, b, start=a)
        else:
            sched = PctScheduler(spec.seed, spec.depth, b, start=a)
    elif chunk[0] == "first":
        sched = DfsScheduler(spec.preemption_bound, max_executions=spec.executions,
                             prefix=[chunk[1]])
    else:
        sched = dpor_subtree(sc, tuple(chunk[1:]), spec.executions)
        if sched is None:
            return ChunkResult(chunk, 0, 0, 0, 0.0, [], [], True)
    rep = explore(sc, sched, stop_on_failure=spec.stop_on_failure)
    failure = None
    if rep.failure is not None:
        failure = json.loads(Schedule.from_result(sc, rep.failure, seed=spec.seed,
                                                  strategy=spec.strategy,
                                                  execution=rep.failure_index).to_json())
    exhausted = rep.exhausted if chunk[0] != "range" else True
    return ChunkResult(chunk, rep.executions, rep.steps, rep.pruned, rep.seconds,
                       sorted(rep.states), sorted(rep.traces), exhausted, failure,
                       sorted(rep.failures))


def _run_chunk_args(args: tuple) -> ChunkResult:
    return run_chunk(*args)


def _worker_ignores_sigint() -> None:
    """Ctrl-C reaches the whole process group: only the parent handles it (it stops the
    pool and keeps the finished chunks), so workers print no traceback of their own."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _spawning_without_sigint() -> Iterator[None]:
    """Workers spawned meanwhile start with SIGINT ignored (the disposition survives exec),
    so a Ctrl-C while one is still importing cannot kill it with a traceback either; the
    initializer above covers workers the pool starts later."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class _CheckpointDoc(BaseModel, strict=True):
    """The checkpoint file as JSON holds it (``CampaignState.to_json``)."""

    spec: dict[str, Any]
    done: list[list[Union[StrictStr, StrictInt]]]
    executions: int = Field(ge=0)
    steps: int = Field(ge=0)
    pruned: int = Field(ge=0)
    cpu_seconds: float = Field(ge=0)
    exhausted: bool
    failure: Optional[dict[str, Any]]
    states: list[str]
    traces: list[str]
    failures: list[str] = []


@dataclass
class CampaignState:
    """What a checkpoint holds."""

    spec: dict[str, Any]
    done: list[list] = field(default_factory=list)
    executions: int = 0
    steps: int = 0
    pruned: int = 0
    cpu_seconds: float = 0.0
    states: set = field(default_factory=set)
    traces: set = field(default_factory=set)
    exhausted: bool = True
    failure: Optional[dict[str, Any]] = None
    failures: set = field(default_factory=set)
    # Executions restored from the checkpoint this run resumed (not persisted): the rate
    # of a resumed campaign counts only what it ran itself.
    restored: tuple[int, int] = (0, 0)  # (executions, steps)

    @property
    def executions_run(self) -> int:
        return self.executions - self.restored[0]

    @property
    def steps_run(self) -> int:
        return self.steps - self.restored[1]

    def merge(self, r: ChunkResult) -> None:
        self.done.append(list(r.chunk))
        self.executions += r.executions
        self.steps += r.steps
        self.pruned += r.pruned
        self.cpu_seconds += r.seconds
        self.states.update(r.states)
        self.traces.update(r.traces)
        self.exhausted &= r.exhausted
        self.failures.update(r.failures)
        if r.failure is not None and self.failure is None:
            self.failure = r.failure

    def to_json(self) -> str:
        d = dict(self.__dict__)
        del d["restored"]
        d["states"] = sorted(self.states)
        d["traces"] = sorted(self.traces)
        d["failures"] = sorted(self.failures)
        return json.dumps(d, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path, spec: CampaignSpec) -> "CampaignState":
        try:
            d = json.loads(read_user_text(path, "checkpoint"))
        except NotTextError as e:
            raise ExplorerError(str(e)) from None
        except json.JSONDecodeError as e:
            raise ExplorerError(f"{path}:{e.lineno}: unreadable checkpoint: {e.msg}") from None
        if not isinstance(d, dict):
            raise ExplorerError(f"{path}: unreadable checkpoint: expected a JSON object")
        if d.get("spec") != json.loads(json.dumps(spec.as_dict())):
            raise ExplorerError(f"{path}: checkpoint belongs to another campaign "
                                f"({clip_repr(d.get('spec'))}); use another --checkpoint path")
        try:
            doc = _CheckpointDoc.model_validate(d)
        except ValidationError as e:
            raise ExplorerError(validation_message(str(path), e)) from None
        st = cls(spec=doc.spec)
        for k in ("done", "executions", "steps", "pruned", "cpu_seconds", "exhausted",
                  "failure"):
            setattr(st, k, getattr(doc, k))
        st.states, st.traces = set(doc.states), set(doc.traces)
        st.failures = set(doc.failures)
        st.restored = (st.executions, st.steps)
        return st


def run_campaign(spec: CampaignSpec, *, jobs: int = 1, ray_address: Optional[str] = None,
                 checkpoint: Optional[Path] = None,
                 on_chunk: Optional[Callable[[CampaignState, ChunkResult], None]] = None
                 ) -> CampaignState:
    state = CampaignState(spec=json.loads(json.dumps(spec.as_dict())))
    if checkpoint is not None and checkpoint.exists():
        state = CampaignState.load(checkpoint, spec)
    done = {tuple(c) for c in state.done}
    pending = [c for c in spec.chunks() if tuple(c) not in done]
    if state.failure is not None and spec.stop_on_failure:
        pending = []
    for r in _execute(spec, pending, jobs, ray_address):
        state.merge(r)
        if checkpoint is not None:
            atomic_write(checkpoint, state.to_json())
        if on_chunk is not None:
            on_chunk(state, r)
        if state.failure is not None and spec.stop_on_failure:
            break
    return state


def _execute(spec: CampaignSpec, chunks: list[tuple], jobs: int,
             ray_address: Optional[str]) -> Iterable[ChunkResult]:
    if not chunks:
        return
    if ray_address is not None:
        yield from _execute_ray(spec, chunks, ray_address, jobs)
        return
    if jobs <= 1:
        for c in chunks:
            yield run_chunk(spec, c)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no inherited state: each worker imports afresh
    with _spawning_without_sigint():
        pool = ctx.Pool(jobs, initializer=_worker_ignores_sigint)
    with pool:
        # imap keeps chunk order, so results and checkpoints are deterministic.
        for r in pool.imap(_run_chunk_args, [(spec, c) for c in chunks]):
            yield r


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when a host:port cluster address does not answer
    (``ray.init`` keeps retrying an unreachable GCS)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or address.startswith("ray://"):
        return
    import socket

    try:
        socket.create_connection((host or "localhost", int(port)), timeout=5).close()
    except OSError as e:
        raise ExplorerError(f"cannot reach the Ray cluster at {address}: {e}") from None


def _execute_ray(spec: CampaignSpec, chunks: list[tuple], address: str, jobs: int = 1
                 ) -> Iterable[ChunkResult]:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        raise ExplorerError("--ray needs the optional 'ray' package: pip install "
                            "'tdpsim[ray]' (or run locally with --jobs N)") from None
    _check_reachable(address)
    try:
        if address == "local":  # a throwaway cluster on this machine, one worker per --jobs
            ray.init(num_cpus=jobs if jobs > 1 else None, ignore_reinit_error=True)
        else:
            ray.init(address=address, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ExplorerError(f"--ray {address}: cannot join the Ray cluster: {e}") from None
    remote = ray.remote(run_chunk)
    refs = [remote.remote(spec, c) for c in chunks]
    for ref in refs:  # in chunk order, like the local pool
        yield ray.get(ref)


def elapsed_rate(state: CampaignState, t0: float) -> float:
    """Executions per second of wall time since t0, counting only the executions this run
    performed (not those restored from a checkpoint)."""
    dt = time.perf_counter() - t0
    return state.executions_run / dt if dt > 0 else 0.0
