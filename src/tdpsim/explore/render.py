"""Views of a recorded execution: a text interleaving diagram (one column per thread) and
Chrome trace-event JSON that Perfetto / chrome://tracing open (one track per thread, one
slice per step, named after the kernel function)."""

from __future__ import annotations

import json
from typing import Any

from .engine import ExecutionResult, TraceStep

_COL = 44


def _cell(step: TraceStep) -> str:
    func = step.funcs[0] if step.funcs else "?"
    if step.kind == "seamcall" or step.kind == "tdcall":
        what = f"{step.kind}"
    elif step.kind.startswith("spte"):
        what = f"{step.kind[5:]} {step.detail}"
    elif step.kind.startswith("lock"):
        what = f"{step.kind[5:]} {step.key[1]}{' (W)' if step.write else ''}"
    else:
        what = f"{step.kind} {step.detail}".strip()
    return f"{func}: {what}"


def diagram(result: ExecutionResult, width: int = _COL, only_switches: bool = False) -> str:
    """The interleaving, one row per step: the running thread's column holds the kernel
    function and what it touched.  ``only_switches`` keeps the first step after each
    context switch and the last step (long runs of one thread collapse)."""
    names = result.thread_names
    head = "step  " + "".join(n[:width - 1].ljust(width) for n in names)
    lines = [head, "-" * len(head)]
    prev = -1
    trace = result.trace
    for i, st in enumerate(trace):
        last = i == len(trace) - 1
        if only_switches and st.tid == prev and not last:
            continue
        prev = st.tid
        cell = _cell(st)
        if len(cell) > width - 1:
            cell = cell[:width - 2] + "~"
        row = "".join(cell.ljust(width) if tid == st.tid else ("|".ljust(width))
                      for tid in range(len(names)))
        lines.append(f"{st.index:<5} {row.rstrip()}")
    if result.failure is not None:
        f = result.failure
        lines.append(f"FAILURE at step {f.step} in {f.thread or '-'}: {f.kind}: {f.message}")
    return "\n".join(lines)


def perfetto(result: ExecutionResult, scenario: str = "") -> dict[str, Any]:
    """Chrome trace-event format: ``ts``/``dur`` in µs, one µs per step."""
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0,
         "args": {"name": f"tdpsim explore {scenario}".strip()}}]
    for tid, name in enumerate(result.thread_names):
        events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid + 1,
                       "args": {"name": name}})
    for st in result.trace:
        events.append({
            "ph": "X", "name": st.funcs[0] if st.funcs else st.kind, "cat": st.kind,
            "pid": 1, "tid": st.tid + 1, "ts": st.index, "dur": 1,
            "args": {"step": st.index, "kind": st.kind, "key": list(map(str, st.key)),
                     "write": st.write, "stack": list(st.funcs), "detail": st.detail}})
    if result.failure is not None:
        f = result.failure
        events.append({"ph": "i", "s": "g", "name": f"{f.kind}", "pid": 1, "tid": 0,
                       "ts": f.step, "args": f.as_dict()})
    return {"traceEvents": events, "displayTimeUnit": "ns"}


def perfetto_json(result: ExecutionResult, scenario: str = "") -> str:
    return json.dumps(perfetto(result, scenario), sort_keys=True) + "\n"
