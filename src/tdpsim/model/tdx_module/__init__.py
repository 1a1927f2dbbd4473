"""TDX module emulator: the S-EPT side of intel/tdx-module behind the SEAMCALL boundary.

One ``TdxModule`` per TD.  Every SEAMCALL is a method named after the kernel wrapper and
returns ``TdxResult``; guest TDCALLs return ``TdcallResult``.  See ``module.py`` for the list of
mirrored module source files and simplifications, ``status.py`` for the status codes.
"""

from .module import (
    FEATURE_DYNAMIC_PAMT, FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY, KEY_EPOCH, KEY_SEPT_TREE,
    OP_INITIALIZED, OP_RUNNABLE, OP_STATE_ALLOWED, OP_UNINITIALIZED, STEPPING_EPF_THRESHOLD,
    TD_BLOCKED, TD_KEYS_CONFIGURED, TD_TEARDOWN, TdxModule, Vcpu, sept_leaves,
)
from .pamt import PT_EPT, PT_NDA, PT_REG, Pamt, PamtEntry
from .results import (
    EEQ_TYPE_ACCEPT, EEQ_TYPE_NONE, EEQ_TYPE_PENDING_EPT_VIOLATION, EptViolationExit,
    GuestAccess, TdcallResult, TdxResult, make_eeq,
)
from .sept import (
    BLOCKED, FREE, MAPPED, NL_BLOCKED, NL_MAPPED, PENDING, PENDING_BLOCKED, STATE_NAMES,
    SeptEntryInfo,
)
from .status import status_name, tdx_operand_busy

__all__ = [
    "BLOCKED", "EEQ_TYPE_ACCEPT", "EEQ_TYPE_NONE", "EEQ_TYPE_PENDING_EPT_VIOLATION",
    "EptViolationExit", "FEATURE_DYNAMIC_PAMT", "FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY",
    "FREE", "GuestAccess", "KEY_EPOCH", "KEY_SEPT_TREE", "MAPPED", "NL_BLOCKED", "NL_MAPPED",
    "OP_INITIALIZED", "OP_RUNNABLE", "OP_STATE_ALLOWED", "OP_UNINITIALIZED", "PENDING",
    "PENDING_BLOCKED", "PT_EPT", "PT_NDA", "PT_REG", "Pamt", "PamtEntry", "STATE_NAMES",
    "STEPPING_EPF_THRESHOLD", "SeptEntryInfo", "TD_BLOCKED", "TD_KEYS_CONFIGURED",
    "TD_TEARDOWN", "TdcallResult", "TdxModule", "TdxResult", "Vcpu", "make_eeq", "sept_leaves",
    "status_name", "tdx_operand_busy",
]
