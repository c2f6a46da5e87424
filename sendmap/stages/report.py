"""The report stage: figures (PNG + PDF) and tables (CSV), drawn from the store (:mod:`sendmap.report`).
"""
from __future__ import annotations

from ..engine.context import Context


def stage_report(ctx: Context) -> None:
    """Figures (PNG + PDF) and tables (CSV)."""
    from ..report.build import write_report

    # --force redraws every figure
    write_report(ctx.group, ctx.out_dir, ctx.cfg, ctx.log, reuse=ctx.resume, helpers=ctx.figure_helpers)


def key_sections(cfg, sections: dict) -> dict:
    """The report key leaves out output.dir: a moved result folder reuses its figures."""
    sections["output"].pop("dir", None)
    return sections
