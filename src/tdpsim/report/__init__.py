"""Reports of simulation runs: rich tables, JSON/CSV exports, an HTML page with plots."""

from .export import result_to_dict, write_csv, write_json
from .html import write_report
from .table import (comparison_rows, comparison_table, compare_view, metric_rows, presets_table,
                    verdict, workloads_table)

__all__ = ["compare_view", "comparison_rows", "comparison_table", "metric_rows", "verdict", "presets_table", "result_to_dict",
           "workloads_table", "write_csv", "write_json", "write_report"]
