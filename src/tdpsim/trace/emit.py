"""Emit the model's events as kernel trace lines — a ``Kvm.tracer`` adapter.

The model emits :mod:`tdpsim.model.events` records (named after the tracepoints) through
``Kvm.tracer``; :class:`TraceEmitter` turns each one into the matching
:mod:`tdpsim.trace.records` record with a deterministic ftrace header and writes it with
:func:`tdpsim.trace.format_line`, so the output is what ``trace-cmd report`` would print
for the same kernel events and parses back with :func:`tdpsim.trace.parse_trace`::

    with TraceEmitter.open("out.txt") as em:
        kvm = create_vm(VmConfig(), tracer=em)
        with em.task(vcpu=0):
            em(KvmPageFault(0, 0, gpa, err))     # what the EPT-violation handler traces
            kvm_mmu_page_fault(kvm.vcpus[0], gpa, err)

Header: ``comm``/``pid``/``cpu`` come from the current task (default: the VMM thread
``qemu-system-x86``; :meth:`TraceEmitter.task` switches, e.g. to ``CPU 0/KVM``), and the
timestamp from a counter that advances ``step_ns`` per event (printed like trace-cmd,
``sec.usec``).

``KvmBug``, ``KvmWarn`` and ``KvmFlushRemoteTlbs`` are not tracepoints: they are counted in
:attr:`TraceEmitter.skipped` and not written.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Callable, Iterator

from ..model import events as ev
from ..model.mmu_internal import RET_PF_FIXED, RET_PF_SPURIOUS
from ..model.spte import PT_WRITABLE_MASK
from . import records as tr
from .formats import format_line

__all__ = ["TraceEmitter", "model_event_to_record", "VMM_COMM", "VMM_PID", "VCPU_PID_BASE"]

VMM_COMM = "qemu-system-x86"
VMM_PID = 4000
VCPU_PID_BASE = 4100


def model_event_to_record(event: object, *, comm: str, pid: int, cpu: int, timestamp: str,
                          page_style: str = "kernel") -> tr.TraceRecord | None:
    """The trace record the kernel would log for a model event (None: not a tracepoint).

    ``page_style="kernel"`` prints ``KVM_MMU_PAGE_PRINTK`` (the role word keeps only the
    bits it shows, so ``is_mirror`` is lost, as on a real host); ``"raw"`` prints
    libtraceevent's ``[FAILED TO PARSE]`` form, which keeps the whole role word.
    """
    h = dict(comm=comm, pid=pid, cpu=cpu, timestamp=timestamp)
    cls = event.__class__
    if cls is ev.KvmTdpMmuSpteChanged:
        e = event  # type: ignore[assignment]
        return tr.KvmTdpMmuSpteChanged(e.as_id, e.gfn, e.level, e.old_spte, e.new_spte, **h)
    if cls is ev.KvmMmuSetSpte:
        e = event  # type: ignore[assignment]
        # w is printed from spte & PT_WRITABLE_MASK; r, x, u were computed at trace time.
        return tr.KvmMmuSetSpte(e.gfn, e.spte, e.level, e.sptep, e.r,
                                bool(e.spte & PT_WRITABLE_MASK), e.x, e.u, **h)
    if cls is ev.KvmMmuSpteRequested:
        return tr.KvmMmuSpteRequested(event.gfn, event.pfn, event.level, **h)  # type: ignore[attr-defined]
    if cls is ev.KvmMmuSplitHugePage:
        return tr.KvmMmuSplitHugePage(event.gfn, event.spte, event.level,  # type: ignore[attr-defined]
                                      event.errno, **h)  # type: ignore[attr-defined]
    if cls is ev.KvmMmuGetPage or cls is ev.KvmMmuPrepareZapPage:
        p: ev.KvmMmuPage = event.page  # type: ignore[attr-defined]
        if page_style == "kernel":
            role = p.role & tr.ROLE_KERNEL_MASK
        elif page_style == "raw":
            role = p.role
        else:
            raise ValueError(f"page_style must be 'kernel' or 'raw', not {page_style!r}")
        args = (p.mmu_valid_gen & 0xFF, p.gfn, role, p.root_count, p.unsync)
        if cls is ev.KvmMmuGetPage:
            return tr.KvmMmuGetPage(*args, style=page_style,
                                    created=event.created, **h)  # type: ignore[attr-defined]
        return tr.KvmMmuPrepareZapPage(*args, style=page_style, **h)
    if cls is ev.KvmPageFault:
        return tr.KvmPageFault(event.vcpu_id, event.guest_rip,  # type: ignore[attr-defined]
                               event.fault_address, event.error_code, **h)  # type: ignore[attr-defined]
    if cls is ev.FastPageFault:
        e = event  # type: ignore[assignment]
        return tr.FastPageFault(e.vcpu_id, e.cr2_or_gpa, e.error_code, e.sptep, e.old_spte,
                                e.new_spte, e.ret == RET_PF_SPURIOUS, e.ret == RET_PF_FIXED, **h)
    if cls is ev.MarkMmioSpte:
        return tr.MarkMmioSpte(event.sptep, event.gfn, event.access,  # type: ignore[attr-defined]
                               event.gen, **h)  # type: ignore[attr-defined]
    return None


class TraceEmitter:
    """Callable ``Kvm.tracer`` that writes one trace line per tracepoint event.

    ``out``: a text file object or any ``write(str)`` callable.  ``line_style``:
    ``"trace-cmd"`` or ``"ftrace"`` (see :func:`format_line`).  ``start_ns``/``step_ns``:
    the timestamp counter.  ``header``: write a ``cpus=N`` line first, as trace-cmd does.
    """

    def __init__(self, out: IO[str] | Callable[[str], object], *, nr_cpus: int = 1,
                 start_ns: int = 1_000_000_000, step_ns: int = 1_000,
                 page_style: str = "kernel", line_style: str = "trace-cmd",
                 header: bool = True) -> None:
        self._write = out.write if hasattr(out, "write") else out  # type: ignore[union-attr]
        self._file: IO[str] | None = None
        self.page_style = page_style
        self.line_style = line_style
        self.ns = start_ns
        self.step_ns = step_ns
        self.comm = VMM_COMM
        self.pid = VMM_PID
        self.cpu = 0
        self.lines = 0
        self.skipped: dict[str, int] = {}
        if header:
            self._write(f"cpus={nr_cpus}\n")

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: object) -> "TraceEmitter":
        """An emitter writing to a new file (closed by :meth:`close` / ``with``)."""
        f = open(path, "w", encoding="utf-8")
        em = cls(f, **kwargs)  # type: ignore[arg-type]
        em._file = f
        return em

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "TraceEmitter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- header context -----------------------------------------------------------------

    def set_task(self, *, vcpu: int | None = None, comm: str | None = None,
                 pid: int | None = None, cpu: int | None = None) -> None:
        """Switch the task that the next events are attributed to.  ``vcpu=n`` means
        QEMU's vCPU thread ``CPU n/KVM`` (pid ``VCPU_PID_BASE + n``, cpu ``n``)."""
        if vcpu is not None:
            self.comm, self.pid, self.cpu = f"CPU {vcpu}/KVM", VCPU_PID_BASE + vcpu, vcpu
        if comm is not None:
            self.comm = comm
        if pid is not None:
            self.pid = pid
        if cpu is not None:
            self.cpu = cpu

    @contextlib.contextmanager
    def task(self, *, vcpu: int | None = None, comm: str | None = None,
             pid: int | None = None, cpu: int | None = None) -> Iterator["TraceEmitter"]:
        """``with em.task(vcpu=1): ...`` — events inside come from that task."""
        saved = (self.comm, self.pid, self.cpu)
        self.set_task(vcpu=vcpu, comm=comm, pid=pid, cpu=cpu)
        try:
            yield self
        finally:
            self.comm, self.pid, self.cpu = saved

    def _timestamp(self) -> str:
        ns = self.ns
        self.ns += self.step_ns
        return f"{ns // 1_000_000_000}.{(ns // 1_000) % 1_000_000:06d}"

    # --- the tracer ---------------------------------------------------------------------

    def record(self, event: object) -> tr.TraceRecord | None:
        """The record for ``event`` with the next header (advances the clock)."""
        rec = model_event_to_record(event, comm=self.comm, pid=self.pid, cpu=self.cpu,
                                    timestamp="", page_style=self.page_style)
        if rec is None:
            name = type(event).__name__
            self.skipped[name] = self.skipped.get(name, 0) + 1
            return None
        object.__setattr__(rec, "timestamp", self._timestamp())
        return rec

    def __call__(self, event: object) -> None:
        rec = self.record(event)
        if rec is not None:
            self._write(format_line(rec, style=self.line_style) + "\n")
            self.lines += 1
