"""Self-contained HTML reports of evaluation runs."""

from safegap.report.html import build_report, write_report

__all__ = ["build_report", "write_report"]
