"""``tdpsim.explore`` — the concurrency explorer.

Runs the model's kernel paths as interleaved threads (greenlets) and lets a strategy pick who
advances at every scheduling point of ``tdpsim.model.sched``: random walk, PCT, bounded DFS,
optimal DPOR with wakeup trees (or source-DPOR), replay.  Failing schedules are shrunk, saved as JSON and
replayed deterministically.  The engine never imports the CLI.
"""

from .engine import Engine, ExecutionResult, ExplorerError, Failure, Scheduler, StepInfo, World
from .runner import ExploreReport, explore, run_one
from .scenario import Scenario, ScenarioError, builtin_names, load_scenario, parse_param
from .strategies import (
    DfsScheduler, DporScheduler, PctScheduler, RandomScheduler, ReplayScheduler,
    ScheduleMismatch, pct_bound,
)

__all__ = [
    "DfsScheduler", "DporScheduler", "Engine", "ExecutionResult", "ExploreReport",
    "ExplorerError", "Failure", "PctScheduler", "RandomScheduler", "ReplayScheduler",
    "Scenario", "ScenarioError", "ScheduleMismatch", "Scheduler", "StepInfo", "World",
    "builtin_names", "explore", "load_scenario", "parse_param", "pct_bound", "run_one",
]
