"""TDX module status codes (RAX) and operand ids, with a decoder.

Mirrors ``include/auto_gen/tdx_error_codes_defs.h`` of intel/tdx-module 1.5.01 and the kernel's
``arch/x86/include/asm/shared/tdx_errno.h``.  Values are the full 64-bit RAX: bits 63:32 are the
status class/code, bits 31:0 the detail (an operand id, or an S-EPT level for ACCEPT results).

Simplifications:
- Only the codes the S-EPT model can return are defined (plus a few kernel software codes).
- Migration, TD-partitioning and TDX Connect codes are omitted.
"""

from __future__ import annotations

from functools import cache
from typing import Final

# --- status codes (high 32 bits, low 32 bits zero) -------------------------------------------
TDX_SUCCESS: Final = 0x0000000000000000
TDX_ERROR: Final = 0x8000000000000000  # kernel: bit 63
TDX_NON_RECOVERABLE: Final = 0x4000000000000000  # kernel: bit 62
TDX_INTERRUPTED_RESUMABLE: Final = 0x8000000300000000
TDX_INTERRUPTED_RESTARTABLE: Final = 0x8000000400000000
TDX_OPERAND_INVALID: Final = 0xC000010000000000
TDX_OPERAND_ADDR_RANGE_ERROR: Final = 0xC000010100000000
TDX_OPERAND_BUSY: Final = 0x8000020000000000
TDX_PREVIOUS_TLB_EPOCH_BUSY: Final = 0x8000020100000000
TDX_OPERAND_BUSY_HOST_PRIORITY: Final = 0x8000020400000000
TDX_HOST_PRIORITY_BUSY_TIMEOUT: Final = 0x9000020500000000
TDX_PAGE_METADATA_INCORRECT: Final = 0xC000030000000000
TDX_PAGE_NOT_FREE: Final = 0xC000030300000000
TDX_HPA_RANGE_NOT_FREE: Final = 0xC000030400000000
TDX_MISSING_PAMT_PAGE_PAIR: Final = 0x8000030800000000
TDX_TD_FATAL: Final = 0xE000060400000000
TDX_LIFECYCLE_STATE_INCORRECT: Final = 0xC000060700000000
TDX_OP_STATE_INCORRECT: Final = 0xC000060800000000
TDX_VCPU_NOT_ASSOCIATED: Final = 0x8000070200000000
TDX_TD_KEYS_NOT_CONFIGURED: Final = 0x8000081000000000
TDX_FLUSHVP_NOT_DONE: Final = 0x8000082400000000
TDX_EPT_WALK_FAILED: Final = 0xC0000B0000000000
TDX_EPT_ENTRY_FREE: Final = 0xC0000B0100000000
TDX_EPT_ENTRY_NOT_FREE: Final = 0xC0000B0200000000
TDX_EPT_ENTRY_NOT_PRESENT: Final = 0xC0000B0300000000
TDX_EPT_ENTRY_NOT_LEAF: Final = 0xC0000B0400000000
TDX_EPT_ENTRY_LEAF: Final = 0xC0000B0500000000
TDX_GPA_RANGE_NOT_BLOCKED: Final = 0xC0000B0600000000
TDX_GPA_RANGE_ALREADY_BLOCKED: Final = 0x00000B0700000000
TDX_TLB_TRACKING_NOT_DONE: Final = 0xC0000B0800000000
TDX_EPT_INVALID_PROMOTE_CONDITIONS: Final = 0xC0000B0900000000
TDX_PAGE_ALREADY_ACCEPTED: Final = 0x00000B0A00000000
TDX_PAGE_SIZE_MISMATCH: Final = 0xC0000B0B00000000
TDX_GPA_RANGE_BLOCKED: Final = 0xC0000B0C00000000
TDX_EPT_ENTRY_STATE_INCORRECT: Final = 0xC0000B0D00000000
TDX_EPT_PAGE_NOT_FREE: Final = 0xC0000B0E00000000
# Kernel software-defined values (never produced by the module itself).
TDX_SW_ERROR: Final = 0x8000FF0000000000
TDX_SEAMCALL_VMFAILINVALID: Final = 0x8000FF00FFFF0000

# --- operand ids (low 32 bits) ---------------------------------------------------------------
TDX_OPERAND_ID_RAX: Final = 0
TDX_OPERAND_ID_RCX: Final = 1
TDX_OPERAND_ID_RDX: Final = 2
TDX_OPERAND_ID_RBX: Final = 3
TDX_OPERAND_ID_R8: Final = 8
TDX_OPERAND_ID_R9: Final = 9
TDX_OPERAND_ID_R10: Final = 10
TDX_OPERAND_ID_R11: Final = 11
TDX_OPERAND_ID_PAGE: Final = 95
TDX_OPERAND_ID_TDR: Final = 0x80
TDX_OPERAND_ID_TDCX: Final = 0x81
TDX_OPERAND_ID_TDVPR: Final = 0x82
TDX_OPERAND_ID_TDCS: Final = 0x90
TDX_OPERAND_ID_TDVPS: Final = 0x91
TDX_OPERAND_ID_SEPT: Final = 0x92  # module: OPERAND_ID_SEPT_TREE
TDX_OPERAND_ID_SEPT_ENTRY: Final = 0x93
TDX_OPERAND_ID_TD_EPOCH: Final = 0xA9
TDX_OPERAND_ID_OP_STATE: Final = 0xAC
TDX_OPERAND_ID_SYS: Final = 0xB8

STATUS_MASK: Final = 0xFFFFFFFF00000000
DETAIL_MASK: Final = 0x00000000FFFFFFFF

_STATUS_NAMES: dict[int, str] = {
    v: k for k, v in sorted(globals().items()) if k.startswith("TDX_") and isinstance(v, int)
    and not k.startswith("TDX_OPERAND_ID_") and v & DETAIL_MASK == 0
    and k not in ("TDX_ERROR", "TDX_NON_RECOVERABLE")
}
_OPERAND_NAMES: dict[int, str] = {
    v: k[len("TDX_OPERAND_ID_"):] for k, v in globals().items()
    if k.startswith("TDX_OPERAND_ID_") and isinstance(v, int)
}
# For these statuses the detail field is an S-EPT level, not an operand id (ACCEPT results).
_LEVEL_DETAIL = frozenset({TDX_PAGE_ALREADY_ACCEPTED, TDX_PAGE_SIZE_MISMATCH})


def with_operand(status: int, operand_id: int) -> int:
    """``api_error_with_operand_id()``: OR the detail into the low 32 bits."""
    return status | (operand_id & DETAIL_MASK)


def status_code(err: int) -> int:
    """The high 32 bits, as the kernel compares them."""
    return err & STATUS_MASK


def tdx_operand_busy(err: int) -> bool:
    """Kernel ``tdx_operand_busy()``: high 32 bits equal TDX_OPERAND_BUSY.

    TDX_PREVIOUS_TLB_EPOCH_BUSY and TDX_OPERAND_BUSY_HOST_PRIORITY do *not* match.
    """
    return err & STATUS_MASK == TDX_OPERAND_BUSY


def is_error(err: int) -> bool:
    """Bit 63: error class (ALREADY_BLOCKED / ALREADY_ACCEPTED are warnings, not errors)."""
    return bool(err & TDX_ERROR)


@cache  # every SEAMCALL's result is counted by name; the codes seen are a few dozen
def status_name(code: int) -> str:
    """Decode a 64-bit status, e.g. 0xC0000B0D00000001 -> "TDX_EPT_ENTRY_STATE_INCORRECT|RCX".

    Unknown high parts print as hex; a level detail prints as ``|L<n>``; an unknown operand as hex.
    """
    hi = code & STATUS_MASK
    lo = code & DETAIL_MASK
    name = _STATUS_NAMES.get(hi, f"0x{hi:016X}")
    if hi == TDX_SEAMCALL_VMFAILINVALID & STATUS_MASK and code == TDX_SEAMCALL_VMFAILINVALID:
        return "TDX_SEAMCALL_VMFAILINVALID"
    if lo == 0:
        return name
    if hi in _LEVEL_DETAIL:
        return f"{name}|L{lo}"
    return f"{name}|{_OPERAND_NAMES.get(lo, f'0x{lo:X}')}"
