"""Trace files recorded through a real broker (make_traces.py regenerates them)."""
