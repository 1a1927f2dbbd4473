"""Cost parameters: every value sourced or marked ASSUMPTION; user files validated."""

import pytest

from tdpsim.cost import (ASSUMPTION, DEFAULT_PARAMS, CostParamsError, estimate, load_params,
                         translation)


def test_every_value_has_a_source_or_is_an_assumption():
    for name, value, unit, source in DEFAULT_PARAMS.rows():
        assert source, name
        assert unit, name
        assert value >= 0, name


def test_published_figures_are_cited():
    demote = DEFAULT_PARAMS.seamcall_us["MEM.PAGE.DEMOTE"]
    assert demote.value == 10.0 and not demote.assumed and "ML-10us" in demote.source
    assert DEFAULT_PARAMS.values["walk_refs_nested_4k"].value == 24
    assert DEFAULT_PARAMS.values["exit_roundtrip_us"].source.startswith(ASSUMPTION)


def test_estimate_components():
    c = {"seamcall.MEM.PAGE.DEMOTE": 3, "seamcall.MEM.PAGE.DEMOTE.TDX_SUCCESS": 3,
         "ept_violations": 10, "guest.accept.2M.TDX_SUCCESS": 1}
    e = estimate(c)
    assert e["seamcall"] == 30.0
    assert e["exits"] == 10 * DEFAULT_PARAMS.v("exit_roundtrip_us")
    zero_2m = (2 << 20) / (DEFAULT_PARAMS.v("zero_gbps") * 1e3)
    assert e["accept"] == pytest.approx(DEFAULT_PARAMS.v("accept_tdcall_us") + zero_2m)
    assert e["total"] == pytest.approx(sum(v for k, v in e.items() if k != "total"))


def test_translation_interpolates():
    assert translation(0.0)["walk_refs_per_miss"] == 24
    assert translation(1.0)["walk_refs_per_miss"] == 19
    assert translation(1.0)["tlb_reach_mib"] > translation(0.0)["tlb_reach_mib"]


def test_user_file_overrides_and_cites_itself(tmp_path):
    f = tmp_path / "host.toml"
    f.write_text('name = "host"\n[values]\nexit_roundtrip_us = 3\n'
                 '[seamcall_us]\n"MEM.PAGE.AUG" = 7\n')
    p = load_params(f)
    assert p.name == "host" and p.v("exit_roundtrip_us") == 3 and p.seamcall("MEM.PAGE.AUG") == 7
    assert p.values["exit_roundtrip_us"].source == f"user file {f}"


@pytest.mark.parametrize("text,key", [
    ("[values]\nexit_us = 1\n", "values.exit_us"),
    ("[values]\nexit_roundtrip_us = -1\n", "values.exit_roundtrip_us"),
    ('[seamcall_us]\n"MEM.PAGE.AUG" = "fast"\n', "seamcall_us.MEM.PAGE.AUG"),
    ("colour = 1\n", "colour"),
    ("[values\n", "(syntax)"),
])
def test_malformed_params_one_clear_error(tmp_path, text, key):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(CostParamsError) as ei:
        load_params(f)
    assert str(ei.value).startswith(f"{f}: {key}: expected ")
