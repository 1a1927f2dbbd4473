"""Exploration strategies, one file each, behind ``engine.Scheduler``'s three methods."""

from .dfs import DfsScheduler
from .dpor import DporScheduler
from .pct import PctScheduler, pct_bound
from .random_walk import RandomScheduler
from .replay import ReplayScheduler, ScheduleMismatch

__all__ = ["DfsScheduler", "DporScheduler", "PctScheduler", "RandomScheduler",
           "ReplayScheduler", "ScheduleMismatch", "pct_bound"]
