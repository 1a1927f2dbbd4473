"""Hypothesis fuzz of every file the CLI reads: workloads, cost parameters, scenarios,
schedules, explorer and compare checkpoints, traces.  Each starts from a valid file and is
damaged at the byte level (flips, inserts, cuts) or the value level (a key's value swapped
for another TOML/JSON value).  Whatever comes out, the result is a run or one ``error:``
line naming the file with exit status 2 — never a traceback.

Example counts are kept small (the suite must stay fast on 2 cores); ``--hypothesis-seed``
or ``HYPOTHESIS_PROFILE=fuzz-long`` run more."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import given
from hypothesis import strategies as st

from conftest import GOLDEN, no_traceback
from sim_small_workloads import SMALL_TD, SMALL_VM

settings.register_profile("fuzz-long", max_examples=1000)
EXAMPLES = int(os.environ.get("TDPSIM_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

TOML_VALUES = ["-1", "0", "1", "2", "513", "9223372036854775807", "-9223372036854775808",
               "1e300", "nan", "inf", "-0.5", "0.0001", '"x"', '""', '"all"', '"4K"', "true",
               "false", "[]", "[0, 0]", '[1, "a"]', "[[1]]", "{}", "{ a = 1 }",
               "{ at_mib = 0, mib = 1 }", "{ at_gfn = 0x7fffffff, pages = 1 }",
               "1979-05-27T07:32:00Z"]


@st.composite
def damaged_bytes(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        else:
            del data[i:]
    return bytes(data)


_ASSIGN = re.compile(r"^(\s*[\w.\"-]+\s*=\s*)(.+)$", re.M)


@st.composite
def damaged_toml(draw, base: str) -> bytes:
    """Either bytes damaged, or some ``key = value`` lines given other values."""
    if draw(st.booleans()):
        return draw(damaged_bytes(base.encode()))
    spots = list(_ASSIGN.finditer(base))
    text = base
    for m in sorted(draw(st.lists(st.sampled_from(spots), min_size=1, max_size=3,
                                  unique_by=lambda m: m.start())),
                    key=lambda m: m.start(), reverse=True):
        value = draw(st.sampled_from(TOML_VALUES))
        text = text[:m.start(2)] + value + text[m.end(2):]
    return text.encode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            yield from _paths(v, (*prefix, i))


@st.composite
def damaged_json(draw, base: str) -> bytes:
    if draw(st.booleans()):
        return draw(damaged_bytes(base.encode()))
    doc = json.loads(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in _paths(doc) if p]))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return json.dumps(doc).encode()


def _write(data: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="tdpsim-fuzz-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _clean_error(r, path: Path) -> None:
    no_traceback(r)
    assert r.exit_code in (0, 1, 2), r.output
    if r.exit_code == 2:
        lines = r.stderr.strip().splitlines()
        assert lines and lines[0].startswith("error: "), r.stderr
        assert len(lines) == 1 or "--skip-bad" in r.stderr, r.stderr


def _domain_error(load, error, data: bytes, suffix: str) -> None:
    """Loading either works or raises ``error`` with one line that starts with the file."""
    p = _write(data, suffix)
    try:
        load(p)
    except error as e:
        msg = str(e)
        assert msg.startswith(str(p)) and "\n" not in msg, msg
    finally:
        p.unlink()


# ------------------------------------------------------------------ workloads, params

@FUZZ
@given(data=st.sampled_from([SMALL_TD, SMALL_VM]).flatmap(damaged_toml))
def test_fuzz_workload(data):
    from tdpsim.sim import WorkloadError, load_workload
    _domain_error(load_workload, WorkloadError, data, ".toml")


PARAMS = """name = "host"
[values]
exit_roundtrip_us = 1.2
fault_us = 0.5
[seamcall_us]
"MEM.PAGE.AUG" = 1.8
"""


@FUZZ
@given(data=damaged_toml(PARAMS))
def test_fuzz_params(data):
    from tdpsim.cost import CostParamsError, load_params
    _domain_error(load_params, CostParamsError, data, ".toml")


# ------------------------------------------------------------------ scenarios, schedules

def _scenario_texts() -> list[str]:
    from tdpsim.explore.scenario import builtin_dir
    return [p.read_text() for p in sorted(builtin_dir().glob("*.toml"))]


@FUZZ
@given(data=st.sampled_from(_scenario_texts()).flatmap(damaged_toml))
def test_fuzz_scenario(tdpsim, data):
    p = _write(data, ".toml")
    out = p.with_suffix(".schedule.json")
    try:
        _clean_error(tdpsim("explore", p, "-n", "2", "--no-shrink", "-o", out), p)
    finally:
        p.unlink()
        out.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def schedule_text(tmp_path_factory) -> str:
    from typer.testing import CliRunner
    from tdpsim.cli.main import app
    out = tmp_path_factory.mktemp("fuzz") / "s.json"
    CliRunner().invoke(app, ["explore", "seed_promotion", "-p",
                             "policy.mirror_promotion=unpatched", "-n", "100", "-o", str(out)])
    return out.read_text()


@FUZZ
@given(data=st.data())
def test_fuzz_schedule(tdpsim, schedule_text, data):
    p = _write(data.draw(damaged_json(schedule_text)), ".json")
    try:
        _clean_error(tdpsim("replay", p), p)
    finally:
        p.unlink()


# ------------------------------------------------------------------ checkpoints

EXPLORE = ("explore", "seed_2vcpu", "-n", "6", "--chunk", "3", "--no-shrink")


@pytest.fixture(scope="module")
def explore_checkpoint(tmp_path_factory) -> str:
    from typer.testing import CliRunner
    from tdpsim.cli.main import app
    ck = tmp_path_factory.mktemp("fuzz") / "c.json"
    r = CliRunner().invoke(app, [*EXPLORE, "--checkpoint", str(ck)])
    assert r.exit_code == 0, r.output
    doc = json.loads(ck.read_text())  # half done: the fuzzed run resumes the second chunk
    doc["done"], doc["executions"] = doc["done"][:1], 3
    return json.dumps(doc)


@FUZZ
@given(data=st.data())
def test_fuzz_explore_checkpoint(tdpsim, explore_checkpoint, data):
    p = _write(data.draw(damaged_json(explore_checkpoint)), ".json")
    try:
        _clean_error(tdpsim(*EXPLORE, "--checkpoint", p), p)
    finally:
        p.unlink()


@pytest.fixture(scope="module")
def compare_checkpoint(tmp_path_factory):
    from typer.testing import CliRunner
    from tdpsim.cli.main import app
    d = tmp_path_factory.mktemp("fuzz")
    wl = d / "small.toml"
    wl.write_text(SMALL_TD)
    ck = d / "c.json"
    r = CliRunner().invoke(app, ["compare", str(wl), "-p", "upstream", "--checkpoint", str(ck)])
    assert r.exit_code == 0, r.output
    return wl, ck.read_text()


@FUZZ
@given(data=st.data())
def test_fuzz_compare_checkpoint(compare_checkpoint, data):
    from tdpsim.cli import resume
    from tdpsim.sim import load_workload
    wl_path, text = compare_checkpoint
    wl = load_workload(wl_path)
    from tdpsim.cost import DEFAULT_PARAMS
    from tdpsim.model.profile import DEFAULT_PROFILE
    key = resume.inputs_key(wl.raw, wl.seed, DEFAULT_PARAMS.rows(), DEFAULT_PROFILE.name)
    _domain_error(lambda p: resume.load(p, key), resume.CheckpointError,
                  data.draw(damaged_json(text)), ".json")


# ------------------------------------------------------------------ traces

TRACES = [p.read_bytes() for p in sorted(GOLDEN.glob("*.txt"))]


@FUZZ
@given(data=st.sampled_from(TRACES).flatmap(damaged_bytes), skip_bad=st.booleans())
def test_fuzz_trace(tdpsim, data, skip_bad):
    p = _write(data, ".txt")
    try:
        _clean_error(tdpsim("replay-trace", p, *(["--skip-bad"] if skip_bad else [])), p)
    finally:
        p.unlink()
