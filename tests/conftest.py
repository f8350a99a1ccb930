"""Shared pytest hooks."""
from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter):
    """The worst parity error of each dtype in this run (tests/ops/op_registry.py collects them), and how much
    of its tolerance it used: the figures the closing notes quote."""
    worst = getattr(sys.modules.get("op_registry"), "WORST", None)
    if not worst:
        return
    terminalreporter.section("parity: worst errors against the float64 reference")
    for key, w in sorted(worst.items()):
        terminalreporter.write_line(f"{key}: max_abs_err={w['max_abs_err']:.3e}; worst error used "
                                    f"{w['tolerance_used']:.1%} of its tolerance, at {w['where']}")
