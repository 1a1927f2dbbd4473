"""Reports of simulation runs: rich tables, JSON/CSV exports, an HTML page with plots.

The names below are loaded on first use: ``html`` pulls in matplotlib (~1 s), which the
commands that only print a table must not pay for."""

from importlib import import_module

_EXPORTS = {"result_to_dict": "export", "write_csv": "export", "write_json": "export",
            "write_report": "html", "compare_view": "table", "comparison_rows": "table",
            "comparison_table": "table", "metric_rows": "table", "verdict": "table",
            "presets_table": "table", "workloads_table": "table"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
