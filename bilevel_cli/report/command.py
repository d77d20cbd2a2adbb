"""`bilevel compare PATH... [--paper] [--out DIR]`: a plain command, not a Hydra app, as it composes no config."""

import argparse
from datetime import datetime
from pathlib import Path

from bilevel_cli.report.report import write_report


def compare(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bilevel compare",
        description="Compare runs: a table of mean ± 95% CI over seeds per setting (runs grouped by the overrides "
                    "they differ in), an HTML report and PNG plots.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="run or multirun directories, or any directory above them (e.g. outputs)")
    parser.add_argument("--paper", action="store_true", help="the paper's numbers beside ours (few-shot table)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where report.html and the PNGs go (default: "
                        "PATH/report for one PATH, outputs/report/<date>_<time> for several)")
    args = parser.parse_args(argv)
    print(write_report(args.paths, args.out or default_out(args.paths), args.paper))


def default_out(paths: list[Path]) -> Path:
    """Beside the runs when there is one path (a sweep's report stays with the sweep); a fresh directory for a
    comparison across several, which belongs to none of them."""
    if len(paths) == 1:
        return paths[0] / "report"
    return Path("outputs") / "report" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"
