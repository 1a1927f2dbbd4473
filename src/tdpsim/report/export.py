"""Metrics as JSON (everything) and CSV (one row per run × phase × counter)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from tdpsim.sim.runner import RunResult


def result_to_dict(r: RunResult) -> dict[str, Any]:
    return {
        "workload": r.workload, "preset": r.preset, "policy": r.policy, "seed": r.seed,
        "vm": r.vm, "status": r.status, "cost_params": r.cost_params,
        "virtual_us": r.virtual_us, "steps": r.steps,
        "totals": dict(sorted(r.totals.items())),
        "coverage": r.coverage, "translation": r.translation,
        "phases": [{"name": p.name, "kind": p.kind, "start_us": p.start_us,
                    "end_us": p.end_us, "skipped": p.skipped, "stage": p.stage,
                    "counters": {k: v for k, v in sorted(p.counters.items()) if v},
                    "cost_us": r.cost.get(p.name, {})} for p in r.phases],
        "samples": [asdict(s) for s in r.samples],
    }


def write_json(results: Sequence[RunResult], path: Path) -> None:
    path.write_text(json.dumps([result_to_dict(r) for r in results], indent=1,
                               sort_keys=False) + "\n")


def write_csv(results: Sequence[RunResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "preset", "seed", "phase", "metric", "value"])
        for r in results:
            for p in r.phases:
                for k, v in sorted(p.counters.items()):
                    if v:
                        w.writerow([r.workload, r.preset, r.seed, p.name, k, v])
                for k, v in r.cost.get(p.name, {}).items():
                    w.writerow([r.workload, r.preset, r.seed, p.name, f"cost_us.{k}",
                                f"{v:.3f}"])
            for k, v in sorted(r.totals.items()):
                w.writerow([r.workload, r.preset, r.seed, "(total)", k, v])
