"""Workload simulator: deterministic event engine, workloads, guest drivers, metrics.

Imports run one way: ``model`` ← ``cost`` ← ``sim``; never the CLI or reports."""

from .policies import (ALIASES, PRESETS, SEED_VARIANTS, Preset, PolicyError, canonical_preset,
                       is_preset, resolve_policy)
from .runner import RunResult, compare, simulate
from .workload import (Workload, WorkloadError, builtin_names, builtin_workload,
                       load_workload, loads_workload, resolve_workload)

__all__ = ["ALIASES", "PRESETS", "SEED_VARIANTS", "canonical_preset", "is_preset", "PolicyError", "Preset", "RunResult", "Workload", "WorkloadError",
           "builtin_names", "builtin_workload", "compare", "load_workload", "loads_workload",
           "resolve_policy", "resolve_workload", "simulate"]
