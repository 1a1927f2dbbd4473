"""Return values of the module emulator: SEAMCALL outputs, TD exits, guest results.

Mirrors the output-register conventions of ``src/common/helpers/helpers.c``
(``set_arch_septe_details_in_vmm_regs``) and the extended exit qualification layout of
``include/tdx_api_defs.h`` / ``src/common/x86_defs/vmcs_defs.h`` of intel/tdx-module 1.5.01.

Simplifications:
- Only RAX, RCX, RDX and R8 outputs are carried.
- A TD exit is described by the EPT-violation information only (no other exit reasons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from .status import TDX_SUCCESS, status_name

# Extended exit qualification types (EEQ bits 3:0).
EEQ_TYPE_NONE: Final = 0
EEQ_TYPE_ACCEPT: Final = 1
EEQ_TYPE_GPA_DETAILS: Final = 2
EEQ_TYPE_ATTR_WR: Final = 5
EEQ_TYPE_PENDING_EPT_VIOLATION: Final = 6


def make_eeq(eeq_type: int, req_level: int, err_level: int, arch_state: int, leaf: bool) -> int:
    """Bits 3:0 type, 34:32 requested level, 37:35 error level, 45:38 state, 46 is-leaf."""
    return (eeq_type & 0xF) | ((req_level & 7) << 32) | ((err_level & 7) << 35) \
        | ((arch_state & 0xFF) << 38) | (int(leaf) << 46)


@dataclass(frozen=True, slots=True)
class EptViolationExit:
    """A TD exit for an EPT violation on a private GPA, as KVM reads it after TDH.VP.ENTER."""

    gpa: int
    eeq: int  # extended exit qualification (KVM: RDX after VP.ENTER)

    @property
    def eeq_type(self) -> int:
        return self.eeq & 0xF

    @property
    def req_level(self) -> int:
        """TDX level the guest asked to ACCEPT (KVM: pg_level = this + 1)."""
        return (self.eeq >> 32) & 7

    @property
    def err_level(self) -> int:
        return (self.eeq >> 35) & 7

    @property
    def err_state(self) -> int:
        return (self.eeq >> 38) & 0xFF

    @property
    def is_leaf(self) -> bool:
        return bool((self.eeq >> 46) & 1)


class TdxResult(NamedTuple):
    """SEAMCALL outputs.  ``exit`` is set only by TDH.VP.ENTER when entry was refused."""

    status: int
    rcx: int = 0
    rdx: int = 0
    r8: int = 0
    exit: EptViolationExit | None = None

    @property
    def ok(self) -> bool:
        return self.status == TDX_SUCCESS

    @property
    def name(self) -> str:
        return status_name(self.status)


class TdcallResult(NamedTuple):
    """Outcome of a guest TDCALL.

    Exactly one of: ``status`` is the RAX the guest sees (``exit`` None); or ``exit`` is set and
    the vCPU TD-exited (the TDCALL is re-executed after re-entry, ``status`` None).
    ``interrupted`` means a 2M ACCEPT stopped on a pending guest interrupt: RIP not advanced,
    progress kept in the entry's accept_counter.
    """

    status: int | None
    exit: EptViolationExit | None = None
    interrupted: bool = False

    @property
    def name(self) -> str:
        return "EXIT" if self.status is None else status_name(self.status)


class GuestAccess(NamedTuple):
    """Outcome of a guest load/store to a private GPA.

    ``pfn`` is the host frame used when the access completed (``ve`` False and ``exit`` None).
    ``from_tlb`` marks a translation served from a possibly stale TLB entry.
    """

    pfn: int | None
    from_tlb: bool = False
    ve: bool = False
    exit: EptViolationExit | None = None
