"""Fixtures for the TDX module emulator tests."""

from __future__ import annotations

import pytest
from tdxm_helpers import OP_INITIALIZED, Td


@pytest.fixture
def td() -> Td:
    """A RUNNABLE TD (after TDH.MR.FINALIZE)."""
    return Td()


@pytest.fixture
def td_build() -> Td:
    """A TD in op-state INITIALIZED (before TDH.MR.FINALIZE)."""
    t = Td(runnable=False)
    assert t.m.op_state == OP_INITIALIZED
    return t
