"""Benchmarks that ship with the package: `python -m fuseprop bench` (the side-by-side table),
and the cases the pytest-benchmark suites in the source tree's benchmarks/ folder time."""
