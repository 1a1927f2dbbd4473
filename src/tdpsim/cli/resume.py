"""``compare --checkpoint``: finished presets kept in a JSON file, so an interrupted
comparison resumes where it stopped and prints byte-identical output.

A checkpoint belongs to one set of inputs (the workload document, the seed, the VM
overrides and the cost parameters): its ``key`` is a hash of them, and a file written for
other inputs is refused rather than silently mixed in.  Its ``digest`` is a hash of the
results, so a damaged or hand-edited file is refused too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ..userfile import NotTextError, read_user_text

FORMAT = "tdpsim-compare-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The checkpoint file is unreadable, malformed or belongs to other inputs."""


def inputs_key(*inputs: Any) -> str:
    """Hash of everything a preset's result depends on besides the preset's name (the
    workload document, seed, cost parameters, kernel)."""
    doc = json.dumps(list(inputs), sort_keys=True, default=repr)
    return hashlib.sha256(doc.encode()).hexdigest()


def _digest(results: Any) -> str:
    """Hash of the results as stored: a hand-edited result is refused, not half-trusted."""
    return hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()


def _result_from(d: dict[str, Any]):
    from ..sim.metrics import PhaseRecord, Sample
    from ..sim.runner import RunResult

    d = dict(d)
    d["phases"] = [PhaseRecord(**p) for p in d["phases"]]
    d["samples"] = [Sample(**s) for s in d["samples"]]
    names = {f.name for f in fields(RunResult)}
    if set(d) != names:
        raise ValueError(f"fields {sorted(set(d) ^ names)}")
    return RunResult(**d)


def load(path: Path, key: str) -> dict[str, Any]:
    """preset name -> RunResult of the presets finished so far (empty if no file)."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(read_user_text(path, "compare checkpoint"))
    except NotTextError as e:
        raise CheckpointError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: not a checkpoint: invalid JSON ({e.msg})"
                              ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format: expected a {FORMAT!r} file")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{path}: version: expected {VERSION}, got "
                              f"{doc.get('version')!r}")
    if doc.get("key") != key:
        raise CheckpointError(f"{path}: key: the checkpoint was written for other inputs "
                              "(workload, seed, --memory-gib/--vcpus or --params); use "
                              "another --checkpoint file")
    results = doc.get("results")
    if not isinstance(results, dict):
        raise CheckpointError(f"{path}: results: expected an object of preset results")
    if doc.get("digest") != _digest(results):
        raise CheckpointError(f"{path}: digest: the results were changed after they were "
                              "written; delete the file to start afresh")
    out = {}
    for preset, d in results.items():
        try:
            out[preset] = _result_from(d)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: results.{preset}: not a run result ({e})"
                                  ) from None
    return out


def save(path: Path, key: str, results: dict[str, Any]) -> None:
    """Write atomically (a Ctrl-C during the write leaves the previous file)."""
    from ..explore.schedule import atomic_write

    done = {p: asdict(r) for p, r in results.items()}
    doc = {"format": FORMAT, "version": VERSION, "key": key, "digest": _digest(done),
           "results": done}
    atomic_write(path, json.dumps(doc, sort_keys=True) + "\n")
