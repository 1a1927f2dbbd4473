"""Reports of simulation runs: rich tables, JSON/CSV exports, an HTML page with plots."""

from .export import result_to_dict, write_csv, write_json
from .html import write_report
from .table import comparison_rows, comparison_table, presets_table, workloads_table

__all__ = ["comparison_rows", "comparison_table", "presets_table", "result_to_dict",
           "workloads_table", "write_csv", "write_json", "write_report"]
