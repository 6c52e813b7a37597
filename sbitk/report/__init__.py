"""The HTML diagnostic report: one self-contained file with the plots embedded.

:func:`report_sections` turns a training history, posterior draws and the diagnostics' result
dataclasses into :class:`Section` objects; :func:`build_report` renders them to an HTML string
with a one-line verdict per check at the top, and :func:`write_report` writes it atomically.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from sbitk.report.checks import Check, overall_status
from sbitk.report.html import Section, build_report, report_sections, write_report

__all__ = [
    "Check",
    "Section",
    "build_report",
    "overall_status",
    "report_sections",
    "write_report",
]
