"""Every recorded real capture (tests/kvmcheck/data/oracle/*/traces: Debian 6.1 and 6.12,
4- and 5-level roots, kvm_amd) replays to exactly the outputs recorded before the replay
was made faster (``golden/real_captures.sha256.json``, written by the tree at 66b7606):
the JSON summary (``--json``: counters, anomalies with their line texts, samples, parse
statistics, the kernel inference), the HTML report and the CLI's text summary, on each
capture as it is and with lines damaged (dropped or mutated: anomalies and bad lines).
The fast path must also equal the reference path (``fast=False``) on each of them, and
on captures recorded later (not in the digests: no output from before to compare with).

Re-record (only when a change of output is intended, from the tree that defines it)::

    PYTHONPATH=src python tests/trace/test_real_capture_outputs.py --record
"""

from __future__ import annotations

import hashlib
import json
import lzma
import sys
from pathlib import Path

import pytest

from tdpsim.trace.replay import ReplayOptions, _replay, replay_trace

HERE = Path(__file__).parent
DATA = HERE.parents[0] / "kvmcheck" / "data" / "oracle"
DIGESTS = HERE / "golden" / "real_captures.sha256.json"
CAPTURES = sorted(DATA.glob("*/traces/*.trace.xz"))


def _name(path: Path) -> str:
    return f"{path.parents[1].name}/{path.name.removesuffix('.trace.xz')}"


def _texts(path: Path) -> dict[str, str]:
    """The capture as recorded and damaged: every 97th line dropped or mutated."""
    text = lzma.decompress(path.read_bytes()).decode()
    lines = text.splitlines(keepends=True)
    for i in range(40, len(lines), 97):
        if i % 2 == 0:
            lines[i] = ""
        elif i % 3 == 0:
            lines[i] = lines[i].replace("level ", "level x", 1)
        else:
            lines[i] = lines[i].replace(" 8", " 9", 1)
    return {"clean": text, "damaged": "".join(lines)}


def _outputs(file: Path, name: str, variant: str) -> dict[str, str]:
    """The outputs to compare, by kind (JSON summary, HTML report)."""
    from tdpsim.cli.trace_output import _html

    res = replay_trace(str(file), ReplayOptions(), skip_bad=variant == "damaged",
                       filename=f"{name}:{variant}")
    return {"json": json.dumps(res.to_dict()), "html": _html(res, "pages.png")}


def _cli_text(file: Path) -> str:
    import typer
    from typer.testing import CliRunner

    from tdpsim.cli.replay_trace import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keeps "replay-trace" a sub-command
    r = CliRunner().invoke(app, ["replay-trace", "--skip-bad", file.name],
                           env={"COLUMNS": "200"})
    return f"exit {r.exit_code}\n{r.output}"


def _digest(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _all_digests(tmp: Path) -> dict[str, str]:
    out = {}
    for cap in CAPTURES:
        name = _name(cap)
        for variant, text in _texts(cap).items():
            file = tmp / f"{name.replace('/', '__')}.{variant}.txt"
            file.write_text(text)
            for kind, s in _outputs(file, name, variant).items():
                out[f"{name}:{variant}:{kind}"] = _digest(s)
    return out


@pytest.fixture(scope="module")
def recorded() -> dict[str, str]:
    return json.loads(DIGESTS.read_text())


def test_every_recorded_capture_is_there(recorded):
    names = {k.rsplit(":", 2)[0] for k in recorded}
    assert len(names) == 80 and names <= {_name(c) for c in CAPTURES}


@pytest.mark.parametrize("cap", CAPTURES, ids=_name)
def test_outputs_are_those_recorded(cap, recorded, tmp_path):
    name = _name(cap)
    for variant, text in _texts(cap).items():
        file = tmp_path / f"{variant}.txt"
        file.write_text(text)
        got = {k: _digest(s) for k, s in _outputs(file, name, variant).items()}
        if f"{name}:{variant}:json" in recorded:
            assert got == {k: recorded[f"{name}:{variant}:{k}"] for k in got}, variant
        if variant == "damaged":
            ref = _replay(str(file), ReplayOptions(), skip_bad=True, filename=f"{name}:{variant}",
                          resolve_lines=True, fast=False)
            assert _digest(json.dumps(ref.to_dict())) == got["json"]


def test_cli_text_is_that_recorded(recorded, tmp_path, monkeypatch):
    """The CLI's text summary of the damaged captures (anomalies and bad lines shown)."""
    monkeypatch.chdir(tmp_path)
    for cap in (c for c in CAPTURES if f"{_name(c)}:damaged:cli" in recorded):
        name = _name(cap)
        file = tmp_path / f"{name.replace('/', '__')}.txt"
        file.write_text(_texts(cap)["damaged"])
        assert _digest(_cli_text(file)) == recorded[f"{name}:damaged:cli"], name


def _record() -> None:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = _all_digests(tmp)
        os.chdir(tmp)
        for cap in CAPTURES[::9]:
            name = _name(cap)
            file = tmp / f"{name.replace('/', '__')}.txt"
            file.write_text(_texts(cap)["damaged"])
            out[f"{name}:damaged:cli"] = _digest(_cli_text(file))
    DIGESTS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(out)} digests to {DIGESTS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit(__doc__)
    _record()
