"""Every config file composes and passes the checks (the lightning-hydra-template habit)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bilevel_cli.cli import CONFIG_DIR
from bilevel_cli.engine.config import check_config
from bilevel_cli.errors import UserError

GROUP_OPTIONS = [(group.name, f.stem) for group in sorted(Path(CONFIG_DIR).iterdir()) if group.is_dir()
                 for f in sorted(group.glob("*.yaml")) if group.name != "experiment"]
EXPERIMENTS = sorted(f.stem for f in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def _compose(*overrides, name="train"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=False)


# Options that need another group's option: reversible learning undoes heavy-ball momentum steps.
COMPANIONS = {("hypergrad", "reversible"): ["inner=momentum"]}


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_group_option_composes_and_checks(group, option):
    check_config(_compose(f"{group}={option}", *COMPANIONS.get((group, option), [])))


def test_reversible_learning_needs_momentum():
    with pytest.raises(UserError, match=r"hypergrad=reversible reverses heavy-ball momentum; use inner=momentum "
                                        r"\(got inner=gd\)"):
        check_config(_compose("hypergrad=reversible"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_checks(experiment):
    check_config(_compose(f"experiment={experiment}"))


def test_experiments_state_only_deltas():
    cfg = _compose("experiment=glyphs_20way_1shot")
    assert cfg.task.ways == 20 and cfg.trainer == _compose().trainer


def test_eval_config_is_the_train_config_plus_a_checkpoint():
    cfg = _compose("checkpoint=x.pt", name="eval")
    assert cfg.checkpoint == "x.pt" and OmegaConf.masked_copy(cfg, ["task", "hypergrad"]) == OmegaConf.masked_copy(
        _compose(), ["task", "hypergrad"])


@pytest.mark.parametrize("override, message", [
    ("hypergrad.T=-3", "hypergrad.T must be an integer >= 1"),
    ("task.shots=0", "task.shots must be an integer >= 1"),
    ("outer.optimizer.lr=0", "outer.optimizer.lr must be a positive number"),
    ("backbone.norm=layer", "unknown backbone.norm 'layer'"),
    ("outer.optimizer._target_=subprocess.run", "outer.optimizer._target_ 'subprocess.run' is not allowed"),
])
def test_bad_values_fail_the_checks(override, message):
    with pytest.raises(UserError, match=message):
        check_config(_compose(override))


def test_truncation_longer_than_T_is_refused():
    with pytest.raises(UserError, match=r"hypergrad.options: truncated: K must be in \[0, T=5\], got K=9"):
        check_config(_compose("hypergrad=truncated", "hypergrad.options.K=9"))
    check_config(_compose("hypergrad=evograd", "hypergrad.options.K=16"))  # EvoGrad's K counts copies, not steps
