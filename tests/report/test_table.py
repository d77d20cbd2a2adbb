"""Mean ± 95% CI over seeds, and the paper's numbers beside ours."""

import pytest

from bilevel_cli.report.paper import paper_cell
from bilevel_cli.report.runs import find_runs, group_runs
from bilevel_cli.report.table import FOOTNOTE, format_table, make_rows, mean_ci95


def test_the_ci_over_seeds_is_student_t():
    # Two seeds at 60 and 62: standard error 1, t(0.975, 1 degree of freedom) = 12.706.
    estimate = mean_ci95([60.0, 62.0])
    assert estimate.mean == 61.0 and estimate.ci95 == pytest.approx(12.706, abs=1e-3)
    assert str(estimate) == "61.00 ± 12.71"
    assert mean_ci95([60.0, 61.0, 62.0]).ci95 == pytest.approx(4.303 * 1 / 3 ** 0.5, abs=1e-3)
    assert mean_ci95([]) is None


def test_the_table_has_one_row_per_setting(sweep):
    groups, _ = group_runs(find_runs([sweep]))
    rows = make_rows(groups)
    lines = format_table(rows, ["hypergrad.T"], paper=False).splitlines()
    assert lines[0].split() == ["hypergrad.T", "runs", "test", "acc", "%", "best", "val", "acc", "%", "s/iter", "wall",
                                "s"]
    # T=1: seeds at 61 and 63; T=3: only seed 0 finished, so its own CI over test episodes, marked.
    assert lines[2].split()[:5] == ["1", "2", "62.00", "±", "12.71"]
    assert lines[3].split()[:7] == ["3", "1", "(+1", "unfinished)", "63.00", "±", "1.00*"]
    assert lines[4].split()[0] == "10" and lines[-1] == FOOTNOTE
    assert [row.s_per_iteration for row in rows] == pytest.approx([0.1, 0.3, 1.0])


@pytest.mark.parametrize("data, ways, shots, task, cell", [
    ("omniglot", 5, 1, "hyper_representation", "98.6"),
    ("omniglot", 20, 5, "hyper_representation", "98.4"),
    ("miniimagenet", 5, 5, "hyper_representation", "64.53 ± 0.68"),
    ("glyphs", 5, 1, "hyper_representation", None),        # our stand-in: not in the paper
    ("omniglot", 5, 1, "joint_training", None),            # a baseline, not the paper's bilevel row
    ("omniglot", 10, 1, "hyper_representation", None),     # no such cell
])
def test_a_run_maps_to_its_paper_cell_by_its_config(data, ways, shots, task, cell):
    config = {"task.name": task, "task.ways": ways, "task.shots": shots,
              "data._target_": f"bilevel_cli.data.{data}.load_{data}"}
    assert (str(paper_cell(config)) if paper_cell(config) else None) == cell


def test_paper_puts_the_paper_column_beside_ours(sweep):
    groups, _ = group_runs(find_runs([sweep]))
    lines = format_table(make_rows(groups), ["hypergrad.T"], paper=True).splitlines()
    assert lines[0].endswith("paper %") and all(line.endswith("98.6") for line in lines[2:5])
