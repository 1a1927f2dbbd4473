"""kvmcheck: measure the host's real KVM MMU with tiny guests, for comparison with the model.

Host side (this package):

* :mod:`.uapi` -- ctypes mirror of the KVM / PAGEMAP_SCAN uapi (names as in the kernel),
* :mod:`.guest` -- hand-assembled touch loop and identity page-table builder (pure),
* :mod:`.vm` -- :class:`KvmSystem` / :class:`Vm` / :class:`Vcpu`, :class:`HostMemory`,
  binary stats, :class:`TouchGuest`,
* :mod:`.host_matrix` -- :class:`HostScenario`, :func:`run_host_scenario`,
  :data:`DEFAULT_MATRIX` returning plain :class:`HostResult` dataclasses.

Importing this package never touches /dev/kvm.  It prints nothing.
"""

from .guest import PAGE_1G, PAGE_2M, PAGE_4K, IdentityPageTables, touch_loop_code
from .host_matrix import (DEFAULT_MATRIX, HostResult, HostScenario, NativeExecution,
                          PageCounts, PhaseResult, host_facts, run_host_matrix,
                          run_host_scenario)
from .vm import (NATIVE_EXEC_MSR, GuestError, HostMemory, KvmCheckError, KvmError,
                 KvmSystem, KvmUnavailable, StatsFd, TouchGuest, Vcpu, Vm,
                 parse_stats_buffer)

__all__ = [
    "PAGE_4K", "PAGE_2M", "PAGE_1G", "IdentityPageTables", "touch_loop_code",
    "DEFAULT_MATRIX", "HostResult", "HostScenario", "NativeExecution", "PageCounts",
    "PhaseResult", "host_facts", "run_host_matrix", "run_host_scenario",
    "NATIVE_EXEC_MSR", "GuestError", "HostMemory", "KvmCheckError", "KvmError", "KvmSystem",
    "KvmUnavailable", "StatsFd", "TouchGuest", "Vcpu", "Vm", "parse_stats_buffer",
]
