"""Footprints of the TDX module's try-locks and epoch fields under the explorer's tracker."""

from tdpsim.explore.tracking import TRACKER, TrackedCallCtx, TrackedTdxModule
from tdpsim.model.sched import SchedPoints
from tdpsim.model.tdx_module.locks import SharexLock
from tdpsim.model.tdx_module.module import KEY_EPOCH, TdxModule


class _Points:
    """A hook recording the footprint notes made before each scheduling point."""

    def __init__(self) -> None:
        self.steps: list[list] = []

    def __call__(self, kind, key, write) -> None:
        self.steps.append(list(TRACKER.sink))
        TRACKER.sink.clear()


def _run(fn):
    sink: list = []
    TRACKER.sink = sink
    try:
        fn()
    finally:
        TRACKER.sink = None
    return sink


def test_shared_acquire_reads_exclusive_writes_and_release_after_point():
    hook = _Points()
    sched = SchedPoints(hook)
    a, b = SharexLock("td_epoch"), SharexLock("tdr")

    def call():
        c = TrackedCallCtx(sched, "seamcall", ("tdx", "epoch"), True)
        assert c.lock(a, False) and c.lock(b, True)
        c.close()

    rest = _run(call)
    key_a, key_b = ("tdx_lock", "td_epoch"), ("tdx_lock", "tdr")
    # Acquisitions in the step before the point; releases in the step after it.
    assert hook.steps == [[(key_a, False), (key_b, True)]]
    assert rest == [(key_a, False), (key_b, True)]
    assert a.held == 0 and b.held == 0


def test_failed_exclusive_try_writes_and_is_not_released():
    sched = SchedPoints(lambda kind, key, write: None)
    lk = SharexLock("td_epoch")
    assert lk.try_acquire(False)

    def call():
        c = TrackedCallCtx(sched, "seamcall", ("tdx", "epoch"), True)
        assert not c.lock(lk, True)
        c.close()

    assert _run(call) == [(("tdx_lock", "td_epoch"), True)]
    assert lk.held == 1


def test_module_epoch_reads_and_track_footprint():
    m = TdxModule()
    m.__class__ = TrackedTdxModule
    assert _run(lambda: m.is_tlb_tracked(0)) == [(KEY_EPOCH, False), (KEY_EPOCH, False)]
    notes = _run(m.tdh_mem_track)
    assert (("tdx_lock", "td_epoch"), True) in notes and (KEY_EPOCH, True) in notes
    assert m.td_epoch == 2
