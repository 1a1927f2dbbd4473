"""Equivalence of policy variants, fault by fault (``tdpsim equiv``).

Imports run one way: ``model`` ← ``sim``, ``explore`` ← ``equiv``; never the CLI or reports."""

from .check import (DEFAULT_BUDGET, Divergence, PairVerdict, Targets, check,
                    first_difference, workload_units)
from .recorder import HOOKS, Recorder

__all__ = ["DEFAULT_BUDGET", "HOOKS", "Divergence", "PairVerdict", "Recorder", "Targets",
           "check", "first_difference", "workload_units"]
