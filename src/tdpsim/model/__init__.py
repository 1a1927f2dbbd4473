"""The model: pure, deterministic, bit-accurate.  No clock, randomness, threads or I/O.

Engines (workload simulator, concurrency explorer, trace replayer) drive it; nothing in
this package imports from them.
"""
