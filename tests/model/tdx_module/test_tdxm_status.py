"""Status codes and their decoding (§7)."""

from tdpsim.model.tdx_module import status as st


def test_exact_values():
    assert st.TDX_OPERAND_BUSY | st.TDX_OPERAND_ID_SEPT == 0x8000020000000092
    assert st.TDX_OPERAND_BUSY | st.TDX_OPERAND_ID_TD_EPOCH == 0x80000200000000A9
    assert st.TDX_EPT_ENTRY_STATE_INCORRECT | st.TDX_OPERAND_ID_RCX == 0xC0000B0D00000001
    assert st.TDX_OPERAND_ID_OP_STATE == 0xAC
    assert st.TDX_PREVIOUS_TLB_EPOCH_BUSY == 0x8000020100000000
    assert st.TDX_INTERRUPTED_RESTARTABLE == 0x8000000400000000


def test_status_name():
    assert st.status_name(0xC0000B0D00000001) == "TDX_EPT_ENTRY_STATE_INCORRECT|RCX"
    assert st.status_name(0x8000020000000092) == "TDX_OPERAND_BUSY|SEPT"
    assert st.status_name(0x80000200000000AC) == "TDX_OPERAND_BUSY|OP_STATE"
    assert st.status_name(0) == "TDX_SUCCESS"
    assert st.status_name(0x00000B0A00000001) == "TDX_PAGE_ALREADY_ACCEPTED|L1"
    assert st.status_name(0xC0000B0800000092) == "TDX_TLB_TRACKING_NOT_DONE|SEPT"
    assert st.status_name(0x1234000000000007) == "0x1234000000000000|0x7"


def test_operand_busy_compares_high_half():
    assert st.tdx_operand_busy(0x8000020000000092)
    assert st.tdx_operand_busy(0x8000020000000001)
    assert not st.tdx_operand_busy(st.TDX_PREVIOUS_TLB_EPOCH_BUSY)
    assert not st.tdx_operand_busy(st.TDX_OPERAND_BUSY_HOST_PRIORITY)


def test_warning_class_is_not_error():
    assert not st.is_error(st.TDX_GPA_RANGE_ALREADY_BLOCKED)
    assert not st.is_error(st.TDX_PAGE_ALREADY_ACCEPTED)
    assert st.is_error(st.TDX_EPT_WALK_FAILED)
