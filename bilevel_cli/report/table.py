"""Groups → rows of figures: mean ± 95% CI over seeds of the test accuracy, and the other per-group figures."""

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

from bilevel_cli.report.paper import PaperCell, paper_cell
from bilevel_cli.report.runs import Group, Run


@dataclass
class Estimate:
    mean: float
    ci95: float | None     # half-width; None when there is nothing to estimate it from
    over_episodes: bool = False  # one run: the CI is its own, over test episodes, not over seeds

    def __str__(self) -> str:
        if self.ci95 is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.ci95:.2f}" + ("*" if self.over_episodes else "")


@dataclass
class Row:
    group: Group
    test_acc: Estimate | None
    best_val_acc: Estimate | None
    s_per_iteration: float | None
    wall_time_s: float | None
    paper: PaperCell | None

    @property
    def runs(self) -> str:
        unfinished = len(self.group.runs) - len(self.group.finished)
        return f"{len(self.group.finished)}" + (f" (+{unfinished} unfinished)" if unfinished else "")


FOOTNOTE = "* one run: ± is its 95% CI over test episodes; otherwise ± is the 95% CI over seeds (Student's t)"


def mean_ci95(values: list[float]) -> Estimate | None:
    """Mean and Student-t 95% half-width over independent repeats (seeds)."""
    if not values:
        return None
    if len(values) == 1:
        return Estimate(values[0], None)
    n = len(values)
    return Estimate(statistics.fmean(values), student_t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n))


def make_rows(groups: list[Group]) -> list[Row]:
    return [_row(group) for group in groups]


def _row(group: Group) -> Row:
    finished = group.finished
    test_acc = mean_ci95([run.summary["test_acc"] for run in finished if "test_acc" in run.summary])
    if len(finished) == 1 and test_acc and "test_ci95" in finished[0].summary:
        test_acc = Estimate(test_acc.mean, finished[0].summary["test_ci95"], over_episodes=True)
    rates = [rate for run in group.runs if (rate := seconds_per_iteration(run)) is not None]
    walls = [run.summary["wall_time_s"] for run in finished if "wall_time_s" in run.summary]
    return Row(group, test_acc,
               mean_ci95([run.summary["best_val_acc"] for run in finished if "best_val_acc" in run.summary]),
               statistics.fmean(rates) if rates else None, statistics.fmean(walls) if walls else None,
               paper_cell(group.runs[0].config))


def seconds_per_iteration(run: Run) -> float | None:
    """The run's typical time per hyper-iteration: the median over its log windows, which a slow first window
    (warm-up, data loading) or a machine busy for a while does not move."""
    rates = [line["s_per_iteration"] for line in run.metrics if "s_per_iteration" in line]
    return statistics.median(rates) if rates else None


def table_cells(rows: list[Row], keys: list[str], paper: bool) -> tuple[list[str], list[list[str]]]:
    """The header and the rows' cells as text: one column per differing key, then the figures ("–" where a
    figure is missing, as for a group that has not finished)."""
    header = [*(keys or ["runs of"]), "runs", "test acc %", "best val acc %", "s/iter", "wall s"]
    header += ["paper %"] if paper else []
    lines = []
    for row in rows:
        cells = [*(row.group.settings.values() or ["all"]), row.runs,
                 str(row.test_acc) if row.test_acc else "–", str(row.best_val_acc) if row.best_val_acc else "–",
                 f"{row.s_per_iteration:.4f}" if row.s_per_iteration is not None else "–",
                 f"{row.wall_time_s:.1f}" if row.wall_time_s is not None else "–"]
        cells += [str(row.paper) if row.paper else "–"] if paper else []
        lines.append(cells)
    return header, lines


def needs_footnote(rows: list[Row]) -> bool:
    return any(row.test_acc and row.test_acc.over_episodes for row in rows)


def format_table(rows: list[Row], keys: list[str], paper: bool) -> str:
    """The rows as an aligned text table, for the terminal."""
    header, lines = table_cells(rows, keys, paper)
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    text = [_aligned(header, widths), _aligned(["-" * width for width in widths], widths)]
    text += [_aligned(line, widths) for line in lines]
    return "\n".join(text + ([FOOTNOTE] if needs_footnote(rows) else []))


def _aligned(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
