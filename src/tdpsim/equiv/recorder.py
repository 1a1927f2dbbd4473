"""What one fault decided, as a stream of plain tuples (not a kernel file).

A ``Recorder`` hangs off one ``Kvm``: the model's audit hook (``Kvm.audit``) gives each
fault's start, the goal level after ``kvm_mmu_hugepage_adjust`` and after every lowering
by ``disallowed_hugepage_adjust``, and the fault's return value; the tracer gives the
SPTEs written (``kvm_tdp_mmu_spte_changed``), the SEAMCALLs issued and any KVM_BUG_ON; a
proxy around ``kvm.x86_ops`` gives the external page-table hooks the MMU called.  Events a
thread produces inside a fault form that fault's unit; the rest (conversions, zaps, guest
TDCALLs, vCPU entries) form host units, so a difference outside the fault path shows too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from tdpsim.model.events import KvmBug, KvmTdpMmuSpteChanged
from tdpsim.model.tdx import SeamcallRecord

# The kvm_x86_ops external page-table hooks the TDP MMU calls (kvm-x86-ops.h).
HOOKS = frozenset(("link_external_spt", "set_external_spte", "free_external_spt",
                   "remove_external_spte", "split_external_spte", "promote_external_spte"))

Unit = tuple  # ("fault", (vcpu, gfn, private, error_code), events) | ("host", (), events)


class _HookProxy:
    """``kvm.x86_ops`` seen through a recorder: hook calls are logged, then delegated."""

    def __init__(self, ops: Any, sink: Callable[[tuple], None]) -> None:
        self._ops = ops
        self._sink = sink

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ops, name)
        if name not in HOOKS:
            return attr
        sink = self._sink

        def hook(kvm: Any, *args: Any) -> Any:
            sink(("hook", name, *args))
            return attr(kvm, *args)
        return hook


class Recorder:
    """Collects the units of one run.  ``whoami`` names the thread running now (the
    explorer interleaves faults of several vCPUs; the simulator runs one at a time)."""

    def __init__(self, whoami: Optional[Callable[[], int]] = None) -> None:
        self.whoami = whoami or (lambda: 0)
        self.units: list[Unit] = []
        self.faults = 0
        self._open: dict[int, tuple[tuple, list]] = {}
        self._host: dict[int, list] = {}
        self._log_owner: Any = None

    def install(self, kvm: Any, tdx: Any = None) -> "Recorder":
        kvm.audit = self._audit
        prev = kvm.tracer
        kvm.tracer = self._trace if prev is None else _both(prev, self._trace)
        kvm.x86_ops = _HookProxy(kvm.x86_ops, self._event)
        if tdx is not None and not tdx.record:
            # SEAMCALLs reach the tracer only when recorded; drop the log as we go.
            tdx.record = True
            self._log_owner = tdx
        return self

    # ------------------------------------------------------------------ sinks
    def _event(self, ev: tuple) -> None:
        tid = self.whoami()
        cur = self._open.get(tid)
        if cur is not None:
            cur[1].append(ev)
        else:
            self._host.setdefault(tid, []).append(ev)

    def _audit(self, ev: tuple) -> None:
        kind = ev[0]
        tid = self.whoami()
        if kind == "fault":
            self._flush_host(tid)
            self._open[tid] = (ev[1:], [])
        elif kind == "ret" and tid in self._open:
            head, events = self._open.pop(tid)
            events.append(ev)
            self.units.append(("fault", head, tuple(events)))
            self.faults += 1
            if self._log_owner is not None:
                self._log_owner.log.clear()
        else:
            self._event(ev)

    def _trace(self, ev: Any) -> None:
        t = type(ev)
        if t is KvmTdpMmuSpteChanged:
            self._event(("spte", ev.gfn, ev.level, ev.old_spte, ev.new_spte))
        elif t is SeamcallRecord:
            self._event(("seamcall", ev.leaf, ev.gfn, ev.level, ev.status))
        elif t is KvmBug:
            self._event(("KVM_BUG_ON", ev.function, ev.message))

    def _flush_host(self, tid: int) -> None:
        events = self._host.pop(tid, None)
        if events:
            self.units.append(("host", (tid,), tuple(events)))

    def finish(self, tail: tuple = ()) -> list[Unit]:
        """Close the run: faults still open (the run stopped inside them) and the host
        events left, then ``tail`` (e.g. the explorer's failure) as a last unit."""
        for tid in sorted(self._open):
            head, events = self._open.pop(tid)
            self.units.append(("fault (unfinished)", head, tuple(events)))
        for tid in sorted(self._host):
            self._flush_host(tid)
        if tail:
            self.units.append(("end", (), tail))
        return self.units


def _both(a: Callable[[Any], None], b: Callable[[Any], None]) -> Callable[[Any], None]:
    def tracer(ev: Any) -> None:
        a(ev)
        b(ev)
    return tracer
