import json

import pytest
import yaml

FEW_SHOT = {"task": {"name": "hyper_representation", "ways": 5, "shots": 1},
            "data": {"_target_": "bilevel_cli.data.omniglot.load_omniglot"}, "hypergrad": {"method": "reverse"}}
DEFAULT_CHOICES = {"task": "hyper_representation", "data": "omniglot", "hypergrad": "reverse", "logger": "none",
                   "experiment": None}


@pytest.fixture
def make_run(tmp_path):
    """Writes a run directory as `bilevel train` leaves it: its config (a few-shot one, `config` keys replaced),
    Hydra's overrides and record of the group options chosen, metrics and (when finished) the summary. Returns its
    path."""
    def make(name, overrides, T=5, seed=0, test_acc=None, test_ci95=None, s_per_iteration=0.5, **config):
        run = tmp_path / "sweep" / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        choices = {**DEFAULT_CHOICES, **{key: option for key, _, option in (o.partition("=") for o in overrides)
                                         if key in DEFAULT_CHOICES}}
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
        full = {**FEW_SHOT, **config, "seed": seed, "hypergrad": {**FEW_SHOT["hypergrad"], "T": T}}
        (run / "config.yaml").write_text(yaml.safe_dump(full))
        lines = [{"step": step, "outer_loss": 1.0 / step, "s_per_iteration": s_per_iteration} for step in (2, 4)]
        lines[-1]["val_acc"] = 50.0 + seed
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        if test_acc is not None:
            summary = {"test_acc": test_acc, "best_val_acc": 50.0 + seed, "T": T, "seed": seed, "method": "reverse",
                       "wall_time_s": 10.0}
            if test_ci95 is not None:
                summary["test_ci95"] = test_ci95
            (run / "summary.json").write_text(json.dumps(summary))
        return run
    return make


@pytest.fixture
def sweep(make_run, tmp_path):
    """A 2 seeds × 3 T sweep with fixed settings shared by all jobs; the job T=3, seed=1 has not finished."""
    for number, (seed, T) in enumerate((seed, T) for seed in (0, 1) for T in (1, 3, 10)):
        finished = not (seed == 1 and T == 3)
        make_run(f"{number}_hypergrad.T={T},seed={seed}", [f"seed={seed}", f"hypergrad.T={T}", "trainer.steps=4"],
                 T=T, seed=seed, test_acc=60.0 + T + 2 * seed if finished else None, test_ci95=1.0,
                 s_per_iteration=0.1 * T)
    return tmp_path / "sweep"
