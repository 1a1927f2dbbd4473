"""Built-in workload files (``*.toml``); see docs/workloads.md."""
