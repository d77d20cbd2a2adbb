"""Finding run directories and grouping their runs by the overrides they differ in."""

import pytest

from bilevel_cli.errors import UserError
from bilevel_cli.report.runs import find_runs, group_runs


def test_a_sweep_groups_by_the_swept_key_with_seeds_pooled(sweep):
    runs = find_runs([sweep])
    assert len(runs) == 6
    groups, common = group_runs(runs)
    assert [group.settings for group in groups] == [{"hypergrad.T": "1"}, {"hypergrad.T": "3"}, {"hypergrad.T": "10"}]
    assert [sorted(run.config["seed"] for run in group.runs) for group in groups] == [[0, 1]] * 3
    assert [len(group.finished) for group in groups] == [2, 1, 2]  # T=3, seed=1 has no summary.json
    assert common == {"trainer.steps": "4"}


def test_runs_are_found_at_any_depth_but_not_inside_a_run(sweep, tmp_path):
    (sweep / "0_hypergrad.T=1,seed=0" / "wandb" / "nested").mkdir(parents=True)
    (sweep / "0_hypergrad.T=1,seed=0" / "wandb" / "nested" / "config.yaml").write_text("{}")
    (sweep / "report").mkdir()
    assert len(find_runs([tmp_path])) == 6
    assert len(find_runs([sweep / "0_hypergrad.T=1,seed=0"])) == 1


def test_a_setting_is_compared_by_its_value_not_by_how_it_was_given(make_run, tmp_path):
    """T=5 typed on one command line and T=5 by default on another are the same setting; a config group option
    one run chose and the others did not is told apart, and theirs is named by the option they were composed with,
    the same as a run that typed it."""
    make_run("a", ["hypergrad.T=5"], T=5, test_acc=60.0)
    make_run("b", [], T=5, test_acc=62.0)
    make_run("c", ["hypergrad=truncated"], T=5, test_acc=64.0)
    make_run("d", ["hypergrad=reverse"], T=5, test_acc=61.0)
    groups, common = group_runs(find_runs([tmp_path / "sweep"]))
    assert [group.settings for group in groups] == [{"hypergrad": "reverse"}, {"hypergrad": "truncated"}]
    assert [len(group.runs) for group in groups] == [3, 1] and common == {"hypergrad.T": "5"}


def test_a_group_option_is_default_for_a_run_without_hydras_record(make_run, tmp_path):
    make_run("a", [], test_acc=60.0)
    (tmp_path / "sweep" / "a" / ".hydra" / "hydra.yaml").unlink()
    make_run("b", ["hypergrad=truncated"], test_acc=64.0)
    groups, _ = group_runs(find_runs([tmp_path / "sweep"]))
    assert [group.settings for group in groups] == [{"hypergrad": "default"}, {"hypergrad": "truncated"}]


def test_a_line_cut_short_by_a_kill_is_left_out(make_run):
    run = make_run("killed", [])
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 6, "outer_')
    (loaded,) = find_runs([run])
    assert [line["step"] for line in loaded.metrics] == [2, 4] and loaded.summary is None


def test_no_runs_under_a_path_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=f"no runs found under {tmp_path}: a run directory holds config.yaml"):
        find_runs([tmp_path])
    with pytest.raises(UserError, match="nowhere is not a directory"):
        find_runs([tmp_path / "nowhere"])


def test_an_unreadable_summary_is_one_clear_error(make_run):
    run = make_run("broken", [], test_acc=50.0)
    (run / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match=f"cannot read {run / 'summary.json'}: "):
        find_runs([run])


def test_a_group_option_that_sets_nothing_is_named_by_its_override(make_run, tmp_path):
    make_run("a", ["logger=tensorboard"], logger={"tensorboard": {"flush_secs": 30}})
    make_run("b", ["logger=none"], logger={})
    groups, _ = group_runs(find_runs([tmp_path / "sweep"]))
    assert [group.settings for group in groups] == [{"logger": "none"}, {"logger": "tensorboard"}]
