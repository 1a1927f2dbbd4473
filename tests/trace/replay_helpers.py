"""Drive the core model with a TraceEmitter attached, the way a VMM and its vCPU threads
would, for the emit → replay round trip tests."""

from __future__ import annotations

import io

from tdpsim.model import events as ev
from tdpsim.model.kvm import RecordingExternalOps
from tdpsim.model.mmu_fault import ept_violation_error_code, kvm_mmu_page_fault
from tdpsim.model.policy import Policy
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.trace.emit import TraceEmitter


class Driver:
    """A VM whose events are written as trace text into ``self.buf``."""

    def __init__(self, *, tdx: bool = False, policy: Policy | None = None,
                 page_style: str = "kernel", nr_vcpus: int = 2, mem_bytes: int = 64 << 20,
                 **config) -> None:
        self.buf = io.StringIO()
        self.em = TraceEmitter(self.buf, nr_cpus=nr_vcpus, page_style=page_style)
        ops = RecordingExternalOps(private_max_level=2) if tdx else None
        self.policy = policy or Policy()
        self.kvm = create_vm(VmConfig(tdx=tdx, nr_vcpus=nr_vcpus, mem_bytes=mem_bytes,
                                      **config), self.policy, x86_ops=ops, tracer=self.em)

    def fault(self, gfn: int, *, vcpu: int = 0, write: bool = True, exec: bool = False,
              private: bool | None = None) -> int:
        """An EPT violation: the vendor handler traces kvm_page_fault, then the MMU runs."""
        kvm = self.kvm
        if private is None:
            private = kvm.kvm_has_mirrored_tdp()
        gpa = gfn << 12
        if kvm.kvm_has_mirrored_tdp() and not private:
            gpa |= kvm.gfn_direct_bits << 12
        err = ept_violation_error_code(write=write, exec=exec, private=private)
        with self.em.task(vcpu=vcpu):
            # TDX private faults report exit qualification 0x2 style codes; the model's
            # error code is what kvm_mmu_page_fault receives.
            self.em(ev.KvmPageFault(vcpu, 0, gpa, err & 0xFFFFFFFF))
            return kvm_mmu_page_fault(kvm.vcpus[vcpu], gpa, err)

    def text(self) -> str:
        return self.buf.getvalue()

    def lines(self) -> list[str]:
        return self.text().splitlines(keepends=True)
