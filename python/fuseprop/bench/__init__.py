"""Benchmarks that ship with the package: `python -m fuseprop bench` (the side-by-side table), the
cases it and the pytest-benchmark suites in the source tree's benchmarks/ folder time (cases.py), and
the measured peak they report against (peak.py)."""
from .peak import fma_peak

__all__ = ["fma_peak"]
