"""Run directories → the comparison: the terminal table, report.html and the PNGs in one output directory."""

from pathlib import Path

from bilevel_cli.errors import UserError
from bilevel_cli.report.html import render
from bilevel_cli.report.plots import make_figures
from bilevel_cli.report.runs import find_runs, group_runs
from bilevel_cli.report.table import format_table, make_rows


def write_report(paths: list[Path], out: Path, paper: bool = False) -> str:
    """Compares the runs at or under `paths`, writes report.html and the plots into `out`; returns the text
    for the terminal: the table, the unfinished runs, and where the report went."""
    runs = find_runs(paths)
    groups, common = group_runs(runs)
    rows = make_rows(groups)
    keys = list(groups[0].settings)
    figures = make_figures(groups, rows)
    unfinished = [run for run in runs if run.summary is None]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for figure in figures:
            (out / figure.name).write_bytes(figure.png)
        (out / "report.html").write_text(render(paths, rows, keys, common, paper, figures, unfinished))
    except OSError as error:
        raise UserError(f"cannot write the report into {out}: {error.strerror}; choose another directory with "
                        "--out DIR") from None
    lines = [f"{len(runs)} runs in {len(groups)} groups" + (
        f"; shared: {' '.join(f'{k}={v}' for k, v in common.items())}" if common else ""), "",
        format_table(rows, keys, paper), ""]
    lines += [f"unfinished (no summary.json): {run.path}" for run in unfinished]
    lines.append(f"report: {out / 'report.html'} (plots: {', '.join(figure.name for figure in figures) or 'none'})")
    return "\n".join(lines)
