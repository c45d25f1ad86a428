"""On-demand benchmarks (``make bench``); never part of the test suite. Results: docs/performance.md."""
