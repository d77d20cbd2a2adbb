"""`bilevel compare` as a user runs it, on a real tiny sweep, and the sweep's own report from the Hydra callback."""

import pytest
from test_cli import TINY

pytestmark = pytest.mark.slow

PLOTS = {"outer_loss.png", "val_acc.png", "test_acc_vs_T.png", "s_per_iteration_vs_T.png"}


def test_a_seeds_by_T_sweep_compares_into_a_table_a_report_and_plots(bilevel, tmp_path):
    """2 seeds × 3 values of T: the callback reports at the sweep's end; `bilevel compare` gives the table."""
    bilevel("train", "-m", "seed=0,1", "hypergrad.T=1,2,3", *TINY, "hydra/callbacks=report")
    (sweep,) = tmp_path.glob("outputs/multirun/*")
    assert {p.name for p in (sweep / "report").iterdir()} == PLOTS | {"report.html"}  # from the callback

    out = bilevel("compare", str(sweep), "--paper", "--out", "compared").stdout.splitlines()
    assert out[0].startswith("6 runs in 3 groups; shared: backbone.channels=8")
    assert out[2].split() == ["hypergrad.T", "runs", "test", "acc", "%", "best", "val", "acc", "%", "s/iter", "wall",
                              "s", "paper", "%"]
    rows = [line.split() for line in out[4:7]]
    assert [row[:2] for row in rows] == [["1", "2"], ["2", "2"], ["3", "2"]]
    assert all(row[3] == "±" and row[-1] == "–" for row in rows)  # glyphs is not in the paper
    assert out[-1].startswith("report: compared/report.html (plots: ")
    assert {p.name for p in (tmp_path / "compared").iterdir()} == PLOTS | {"report.html"}


def test_a_single_run_is_not_reported_by_the_callback(bilevel, tmp_path):
    bilevel("train", *TINY, "hydra/callbacks=report")
    (run,) = tmp_path.glob("outputs/train/*")
    assert not (run / "report").exists()
    out = bilevel("compare", str(run)).stdout
    assert "1 runs in 1 groups" in out and (run / "report" / "report.html").is_file()


def test_compare_mistakes_are_one_line_and_exit_2(bilevel, tmp_path):
    (tmp_path / "empty").mkdir()
    done = bilevel("compare", "empty", check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "bilevel: error: no runs found under empty: a run directory holds config.yaml or .hydra/overrides.yaml"]
    done = bilevel("compare", check=False)
    assert done.returncode == 2 and "the following arguments are required: PATH" in done.stderr
