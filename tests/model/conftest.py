"""Fixtures for the core-model tests."""

import pytest

from tdpsim.model.kvm import RecordingExternalOps
from tdpsim.model.policy import Policy
from tdpsim.model.vmm import VmConfig, create_vm


@pytest.fixture
def make_vm():
    def _make(*, tdx=False, policy=None, ops=None, **config):
        if tdx and ops is None:
            ops = RecordingExternalOps(private_max_level=2)
        return create_vm(VmConfig(tdx=tdx, **config), policy or Policy(), x86_ops=ops)
    return _make
