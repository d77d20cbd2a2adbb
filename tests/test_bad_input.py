"""Bad input (issue 8): each kind stops `bilevel` before any training with one line that names the problem and the
fix, exit code 2, and nothing written outside the run directory.

One case of each kind runs the command as a user types it. The others differ from it only in the config, and go
through the same checks in-process: the command turns any UserError into its one line and exit code 2, so a
one-line UserError raised before training is the same outcome, in a fraction of the time.
"""

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from bilevel_cli.cli import CONFIG_DIR
from bilevel_cli.engine import checkpoint
from bilevel_cli.engine.build import build_data, build_task
from bilevel_cli.engine.config import check_config, check_overrides, missing_option
from bilevel_cli.engine.evaluate import evaluate_checkpoint
from bilevel_cli.errors import UserError

CPU = torch.device("cpu")
SMALL = ["backbone.channels=8", "trainer.test_episodes=4", "trainer.eval_batch=4", "device=cpu"]


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _error(function, *args) -> str:
    with pytest.raises(UserError) as error:
        function(*args)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _snapshot(*roots) -> dict:
    return {path: path.stat().st_mtime_ns for root in roots for path in root.rglob("*")}


def _fake_omniglot(root, characters_per_set=2):
    """A tiny tree in torchvision's layout: one alphabet per set, 20 blank 105×105 drawings per character."""
    drawing = Image.new("1", (105, 105), 1)
    for name in ("images_background", "images_evaluation"):
        for c in range(characters_per_set):
            folder = root / "omniglot-py" / name / "Alphabet" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(20):
                drawing.save(folder / f"{c:04d}_{d + 1:02d}.png")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, glyph_root):
    """A few-shot checkpoint (conv4 with 8 filters, on glyphs), a hyper-cleaning one, and files that are no good one."""
    folder = tmp_path_factory.mktemp("checkpoints")
    for name, overrides in (("fewshot", [*SMALL, f"data.root={glyph_root}"]),
                            ("cleaning", ["experiment=hyper_cleaning", "device=cpu"])):
        cfg = _compose(*overrides)
        task = build_task(cfg, build_data(cfg, CPU))
        checkpoint.save(folder / f"{name}.pt", {"task": task.state_dict(), "step": 1,
                                                "config": OmegaConf.to_container(cfg, resolve=True)})
    (folder / "truncated.pt").write_bytes((folder / "fewshot.pt").read_bytes()[:3000])
    (folder / "notes.pt").write_text("not a checkpoint\n")
    return folder


class _Marker:
    """Unpickled, it would create `path`: the stand-in for whatever code a crafted checkpoint means to run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return type(self.path).touch, (self.path,)


# The command line, as a user types it.

@pytest.fixture
def cli(bilevel, tmp_path, glyph_root):
    """Runs `bilevel ARGS` in tmp_path; asserts exit code 2, one `bilevel: error:` line on stderr, and that the run
    wrote nowhere but its run directory (nor into the data); returns that line."""
    def run(*args, data=()):
        watched = [glyph_root, *data]
        before, data_before = _snapshot(tmp_path), _snapshot(*watched)
        done = bilevel(*args, check=False)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("bilevel: error: "), done.stderr
        assert _snapshot(*watched) == data_before
        run_dirs = list(tmp_path.glob("outputs/*/*"))
        assert len(run_dirs) <= 1
        for path, stamp in _snapshot(tmp_path).items():
            inside = run_dirs and (path == run_dirs[0] or run_dirs[0] in path.parents or path in run_dirs[0].parents)
            assert inside or before.get(path) == stamp, f"{path} written outside the run directory"
        return lines[0].removeprefix("bilevel: error: ")
    return run


@pytest.mark.slow
def test_cli_unknown_backbone(cli):
    assert cli("train", "backbone=nope") == (
        "unknown backbone 'nope'; choose one of: conv4, conv4_mini, resnet12, resnet18")


@pytest.mark.slow
def test_cli_misspelt_key(cli):
    assert cli("train", "trainer.stepz=3") == (
        "trainer.stepz is not in the config (did you mean trainer.steps?); to add a new key, write +trainer.stepz=3")


@pytest.mark.slow
def test_cli_zero_T(cli):
    assert cli("train", *SMALL, "hypergrad.T=0") == "hypergrad.T must be an integer >= 1, got 0 (e.g. hypergrad.T=5)"


@pytest.mark.slow
def test_cli_more_ways_than_a_split_has_classes(cli):
    # 300 fits the 2940 training classes of glyphs but not its 244 validation classes: refused before training.
    assert cli("train", *SMALL, "task.ways=300") == (
        "300-way episodes need 300 classes but the split has 244 (val); lower task.ways to 244 or fewer")


@pytest.mark.slow
def test_cli_missing_data_root(cli, tmp_path):
    message = cli("train", *SMALL, "data=omniglot", "data.root=/nonexistent")
    assert message.startswith("Omniglot not found: looked for /nonexistent/omniglot-py/images_background")
    assert "data.root=" in message and "data.download=true" in message


@pytest.mark.slow
def test_cli_corrupt_image_is_named(cli, tmp_path_factory):
    root = _fake_omniglot(tmp_path_factory.mktemp("omniglot"))
    png = root / "omniglot-py" / "images_evaluation" / "Alphabet" / "character02" / "0001_07.png"
    png.write_bytes(b"\x89PNG garbage")
    message = cli("train", *SMALL, "data=omniglot", f"data.root={root}", data=[root])
    assert message.startswith(f"Omniglot drawing {png} is corrupt or not a PNG; restore it from ")


@pytest.mark.slow
def test_cli_malicious_target(cli, tmp_path):
    """A nested `_target_`, which Hydra's recursive instantiation would call while building the backbone."""
    message = cli("train", *SMALL, "+backbone.block._target_=pathlib.Path.touch", f"+backbone.block.self={tmp_path}/x")
    assert message.startswith("backbone.block._target_ 'pathlib.Path.touch' is not allowed")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_checkpoint_of_another_task(cli, checkpoints, tmp_path):
    shutil.copy(checkpoints / "cleaning.pt", tmp_path)
    assert cli("eval", "checkpoint=cleaning.pt", "task.name=hyper_representation") == (
        "checkpoint cleaning.pt is from task=hyper_cleaning, not task=hyper_representation; use a checkpoint of a "
        "task=hyper_representation run, or drop the task override")


@pytest.mark.slow
def test_cli_eval_without_a_checkpoint(cli):
    assert cli("eval") == "no checkpoint to test; pass one: bilevel eval checkpoint=outputs/train/<run>/best.pt"


@pytest.mark.slow
def test_cli_truncated_checkpoint(cli, checkpoints, tmp_path):
    shutil.copy(checkpoints / "truncated.pt", tmp_path)
    assert cli("eval", "checkpoint=truncated.pt").startswith(
        "cannot read checkpoint truncated.pt: it is truncated or damaged (")


@pytest.mark.slow
def test_cli_crafted_checkpoint_runs_no_code(cli, tmp_path):
    torch.save({"task": _Marker(tmp_path / "ran"), "config": {}}, tmp_path / "crafted.pt")
    assert cli("eval", "checkpoint=crafted.pt").startswith(
        "checkpoint crafted.pt was not loaded: it holds a reference to ")
    assert not (tmp_path / "ran").exists()


# The same checks, in-process.

@pytest.mark.parametrize("argv, group, option", [
    (["backbone=nope"], "backbone", "nope"), (["hypergrad=nope"], "hypergrad", "nope"), (["inner=sgd"], "inner", "sgd"),
    (["outer=sgd"], "outer", "sgd"), (["data=nope"], "data", "nope"), (["task=nope"], "task", "nope"),
    (["experiment=nope"], "experiment", "nope"), (["+experiment=nope"], "experiment", "nope"),
    (["-m", "hypergrad=reverse,nope"], "hypergrad", "nope"), (["logger=[wandb,nope]"], "logger", "nope"),
])
def test_unknown_group_option_lists_the_options(argv, group, option):
    options = sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    assert _error(check_overrides, argv, CONFIG_DIR, "train") == (
        f"unknown {group} {option!r}; choose one of: {', '.join(options)}")


@pytest.mark.parametrize("argv, command, message", [
    (["trainer.stepz=3"], "train",
     "trainer.stepz is not in the config (did you mean trainer.steps?); to add a new key, write +trainer.stepz=3"),
    (["experiment=omniglot_5way_1shot", "inner.lrr=2"], "train",
     "inner.lrr is not in the config (did you mean inner.lr?); to add a new key, write +inner.lrr=2"),
    (["-m", "hypergrad.T=1,5", "backbone.chanels=8"], "train",
     "backbone.chanels is not in the config (did you mean backbone.channels?); to add a new key, write "
     "+backbone.chanels=8"),
    (["hydra.run.dirr=x"], "train", "hydra.run.dirr is not in the config (did you mean hydra.run.dir?)"),
    (["checkpoint=best.pt", "trainer.test_episodez=9"], "eval",
     "trainer.test_episodez is not in the config (did you mean trainer.test_episodes?)"),
    (["zzz.qqq=1"], "train", "zzz.qqq is not in the config; to add a new key, write +zzz.qqq=1"),
    (["~trainer.nope"], "train", "Could not delete from config. 'trainer.nope' does not exist."),
    (["hydra/launcher=nope"], "train", "unknown hydra/launcher 'nope'; choose one of: basic, "),
    (["hypergrad.T=[1"], "train", "cannot parse 'hypergrad.T=[1': "),
    (["hypergrad.T=1,5"], "train", "Ambiguous value for argument 'hypergrad.T=1,5' "),
])
def test_an_override_hydra_would_refuse_is_one_line(argv, command, message):
    assert _error(check_overrides, argv, CONFIG_DIR, command).startswith(message)


def test_the_users_config_folders_are_searched_for_group_options(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nhypergrad:\n  T: 2\n")
    for argv in (["-cd", str(tmp_path)], [f"--config-dir={tmp_path}"], [f"hydra.searchpath=[file://{tmp_path}]"]):
        check_overrides([*argv, "experiment=mine"], CONFIG_DIR, "train")
        assert ", mine, miniimagenet_5way_1shot," in _error(check_overrides, [*argv, "experiment=nope"], CONFIG_DIR,
                                                             "train")
        assert _error(check_overrides, [*argv, "experiment=mine", "trainer.stepz=1"], CONFIG_DIR, "train").startswith(
            "trainer.stepz is not in the config (did you mean trainer.steps?)")
    assert _error(check_overrides, ["experiment=mine"], CONFIG_DIR, "train").startswith("unknown experiment 'mine'")
    assert _error(check_overrides, ["-cd", str(tmp_path / "nope")], CONFIG_DIR, "train") == (
        f"-cd {tmp_path / 'nope'}: no such folder; give the folder of your own config files")
    assert _error(check_overrides, [f"hydra.searchpath=file://{tmp_path}"], CONFIG_DIR, "train") == (
        f"hydra.searchpath must be a list; write hydra.searchpath=[file://{tmp_path}]")


def test_a_launcher_without_its_plugin_says_what_to_install():
    # What Hydra reports for hydra/launcher=parallel when hydra-joblib-launcher is not installed (the tests have it).
    assert missing_option("hydra/launcher", "joblib", ["basic", "parallel", "slurm"]) == (
        "hydra/launcher 'joblib' needs the plugin hydra-joblib-launcher, which is not installed; "
        'pip install -e ".[launchers]"')


@pytest.mark.parametrize("argv", [["backbone=resnet12", "hypergrad=truncated"], ["-m", "hypergrad=reverse,forward"],
                                  ["--cfg", "job"], ["~backbone"], ["hypergrad.T=3"], ["logger=[wandb,tensorboard]"],
                                  ["-m", "experiment=omniglot_5way_1shot,omniglot_20way_5shot", "inner.lr=0.01,0.03"],
                                  ["+trainer.note=x"], ["hydra/launcher=parallel"], ["-m", "seed=range(3)"],
                                  ["--config-name", "another", "trainer.stepz=1"]])
def test_overrides_hydra_accepts_pass(argv):
    check_overrides(argv, CONFIG_DIR, "train")


@pytest.mark.parametrize("override, message", [
    ("trainer=3",
     "trainer is a section of settings, not a value (got trainer=3); set its keys, e.g. trainer.steps=1000"),
    ("paths=x", "paths is a section of settings, not a value (got paths='x'); set its keys, e.g. paths.data_dir=/data"),
])
def test_a_section_set_to_a_value(override, message):
    assert _error(check_config, _compose(override)) == message


@pytest.mark.parametrize("override, message", [
    ("hypergrad.T=0", "hypergrad.T must be an integer >= 1, got 0 (e.g. hypergrad.T=5)"),
    ("hypergrad.T=-1", "hypergrad.T must be an integer >= 1, got -1 (e.g. hypergrad.T=5)"),
    ("inner.lr=0", "inner.lr must be a positive number, got 0 (e.g. inner.lr=0.1)"),
    ("inner.lr=-0.5", "inner.lr must be a positive number, got -0.5 (e.g. inner.lr=0.1)"),
    ("outer.optimizer.lr=-0.001", "outer.optimizer.lr must be a positive number, got -0.001"),
    ("outer.optimizer.lr=0", "outer.optimizer.lr must be a positive number, got 0"),
    ("trainer.test_episodes=0", "trainer.test_episodes must be an integer >= 1, got 0"),
    ("trainer.val_episodes=-5", "trainer.val_episodes must be an integer >= 1, got -5"),
    ("task.meta_batch=0", "task.meta_batch must be an integer >= 1, got 0"),
    ("hypergrad.method=nope", "unknown hypergrad.method 'nope'; choose one of: reverse, "),
    ("inner.name=nope", "unknown inner.name 'nope'; choose one of: gd, "),
    ("trainer.precision=fp16", "unknown trainer.precision 'fp16'; choose one of: fp32, bf16"),
    ("inner.learn_lr=maybe", "inner.learn_lr must be true or false, got 'maybe'"),
    ("backbone.pool=1", "backbone.pool must be true or false, got 1"),
    ("task.curvature_scaled_rate=yes", "task.curvature_scaled_rate must be true or false, got 'yes'"),
    ("trainer.select_T=3",
     "trainer.select_T must be a list of integers >= 1, got 3 (e.g. 'trainer.select_T=[1,3,5,10]')"),
    ("trainer.select_T=[0,5]", "trainer.select_T must be a list of integers >= 1, got [0, 5]"),
    # The inner optimizer's and hypergradient's options, checked by the core on a one-number problem.
    ("inner=momentum inner.options.momentum=2", "inner.options: momentum must be in [0, 1], got 2"),
    ("inner=momentum inner.options.momentum=fast", "inner.options.momentum must be a number, got 'fast'"),
    ("inner=adam +inner.options.betas=[0.9,1.0]", "inner.options: betas must be in [0, 1), got (0.9, 1.0)"),
    ("+inner.options.foo=1", "inner.options: gd() got an unexpected keyword argument 'foo'"),
    ("hypergrad=evograd hypergrad.options.K=0", "hypergrad.options: evograd: K must be >= 1 and sigma, tau > 0, got K=0"),
    ("hypergrad=checkpointed hypergrad.options.segment=0",
     "hypergrad.options: checkpointed: segment must be >= 1, got segment=0"),
    ("hypergrad=reversible inner=momentum hypergrad.options.bits=70",
     "hypergrad.options: reversible: bits must be in [0, 62], got bits=70"),
    ("+hypergrad.options.foo=1", "hypergrad.options: reverse() got an unexpected keyword argument 'foo'"),
    ("backbone.channels=0", "backbone.channels must be a positive integer (conv4) or a list of them (resnet12), got 0 "
                            "(e.g. backbone.channels=64 or 'backbone.channels=[64,160,320,640]')"),
    ("backbone.channels=[64,0]", "backbone.channels must be a positive integer (conv4) or a list of them (resnet12), "
                                 "got [64, 0]"),
    ("backbone.channels=[]", "backbone.channels must be a positive integer (conv4) or a list of them (resnet12), got []"),
    ("backbone.channels=wide", "backbone.channels must be a positive integer (conv4) or a list of them (resnet12), "
                               "got 'wide'"),
    ("outer.optimizer._target_=torch.optim.Nope", "outer.optimizer._target_ 'torch.optim.Nope' names no class"),
    ("backbone._target_=bilevel_cli.models.Nope", "backbone._target_ 'bilevel_cli.models.Nope' names no function"),
    # What a config may instantiate: nothing outside this project and torch, and in torch classes only.
    ("outer.optimizer._target_=os.system", "outer.optimizer._target_ 'os.system' is not allowed"),
    ("data._target_=subprocess.run", "data._target_ 'subprocess.run' is not allowed"),
    ("outer.optimizer._target_=torch.hub.load", "outer.optimizer._target_ 'torch.hub.load' is not allowed"),
    ("backbone._target_=torch.nn.utils.clip_grad_norm_", "backbone._target_ 'torch.nn.utils.clip_grad_norm_' names "
                                                         "no class"),
    ("+backbone.block._target_=os.system", "backbone.block._target_ 'os.system' is not allowed"),
    ("+trainer.hook._target_=bilevel_cli.data.glyphs.load_glyphs", "trainer.hook._target_ "),
])
def test_bad_config_value(override, message):
    assert _error(check_config, _compose(*override.split())).startswith(message)


def test_bf16_needs_a_task_with_a_backbone():
    cfg = _compose("experiment=hyper_cleaning", "trainer.precision=bf16")
    assert _error(check_config, cfg).startswith("trainer.precision=bf16 runs a backbone in bfloat16, and "
                                                "task=hyper_cleaning has none")
    check_config(_compose("task=joint_training", "trainer.precision=bf16"))


def test_unknown_keyword_of_a_constructor_is_one_line(glyph_root):
    cfg = _compose(*SMALL, f"data.root={glyph_root}", "+backbone.filters=8")
    check_config(cfg)
    assert _error(build_task, cfg, build_data(cfg, CPU)).startswith(
        "backbone does not fit bilevel_cli.models.Conv4: got an unexpected keyword argument 'filters'")


@pytest.mark.parametrize("overrides, message", [
    (["task.ways=3000"], "3000-way episodes need 3000 classes but the split has 244 (val)"),
    (["task.queries=30"], "1 shots + 30 queries need 31 images per class but the split has 20"),
    (["task.shots=5", "task.queries=16"], "5 shots + 16 queries need 21 images per class but the split has 20"),
    (["task=joint_training", "task.ways=500"], "500-way episodes need 500 classes but the split has 244 (val)"),
])
def test_episodes_the_splits_cannot_supply(glyph_root, overrides, message):
    cfg = _compose(*SMALL, f"data.root={glyph_root}", *overrides)
    check_config(cfg)
    assert _error(build_task, cfg, build_data(cfg, CPU)).startswith(message)


def _omniglot_without_evaluation(root):
    shutil.rmtree(_fake_omniglot(root) / "omniglot-py" / "images_evaluation")


def _omniglot_drawings_one_level_up(root):
    """Drawings straight in the alphabet folders: a tree unzipped one level too flat."""
    tree = _fake_omniglot(root) / "omniglot-py" / "images_background" / "Alphabet"
    for character in list(tree.iterdir()):
        for png in character.iterdir():
            png.rename(tree / f"{character.name}_{png.name}")
        character.rmdir()


def _omniglot_drawing_missing(root):
    next((_fake_omniglot(root) / "omniglot-py" / "images_background" / "Alphabet" / "character01").iterdir()).unlink()


def _miniimagenet_with_another_header(root):
    (root / "miniimagenet" / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / "miniimagenet" / f"{split}.csv").write_text("file,class\nn0153282900000005.jpg,n01532829\n")


def _mnist_labels_missing(root):
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / "MNIST" / "raw" / name).write_bytes(b"")


@pytest.mark.parametrize("data, make, message", [
    ("omniglot", None, "Omniglot not found: looked for {root}/omniglot-py/images_background"),
    ("miniimagenet", None, "MiniImagenet not found: looked for {root}/miniimagenet/"),
    ("mnist", None, "MNIST not found: {root}/MNIST/raw lacks "),
    ("omniglot", _omniglot_without_evaluation, "Omniglot is incomplete: {root}/omniglot-py/images_evaluation is "
                                               "missing"),
    ("omniglot", _omniglot_drawings_one_level_up, "Omniglot {root}/omniglot-py/images_background holds no "
                                                  "<alphabet>/<character>/ folders"),
    ("omniglot", _omniglot_drawing_missing, "Omniglot character folder {root}/omniglot-py/images_background/Alphabet/"
                                            "character01 holds 19 drawings instead of 20"),
    ("miniimagenet", _miniimagenet_with_another_header, "MiniImagenet {root}/miniimagenet/train.csv does not start "
                                                        "with the header filename,label"),
    ("mnist", _mnist_labels_missing, "MNIST not found: {root}/MNIST/raw lacks train-labels-idx1-ubyte[.gz]"),
], ids=["omniglot-missing", "miniimagenet-missing", "mnist-missing", "omniglot-partial", "omniglot-flat",
        "omniglot-short-character", "miniimagenet-header", "mnist-partial"])
def test_missing_or_wrongly_laid_out_data_set(tmp_path, monkeypatch, data, make, message):
    root = tmp_path / "data"
    if make:
        root.mkdir()
        make(root)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    task = "hyper_cleaning" if data == "mnist" else "hyper_representation"
    cfg = _compose(f"task={task}", f"data={data}", f"data.root={root}", "device=cpu")
    check_config(cfg)
    assert _error(build_data, cfg, CPU).startswith(message.format(root=root))
    assert _snapshot(tmp_path) == before


def _evaluate_error(checkpoints, tmp_path, name, *overrides) -> str:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    message = _error(evaluate_checkpoint, str(checkpoints / name), list(overrides), run_dir)
    assert not any(run_dir.iterdir())
    return message


@pytest.mark.parametrize("name, overrides, message", [
    ("cleaning.pt", ["task.name=hyper_representation"],
     "checkpoint {dir}/cleaning.pt is from task=hyper_cleaning, not task=hyper_representation"),
    ("fewshot.pt", ["backbone.channels=64"], "checkpoint {dir}/fewshot.pt was trained with backbone.channels=8, but "
                                             "the config asks for backbone.channels=64; drop that override"),
    ("fewshot.pt", ["backbone.norm=running"], "checkpoint {dir}/fewshot.pt was trained with backbone.norm=episode"),
    ("fewshot.pt", ["backbone=resnet12"], "eval cannot switch the config group 'backbone'"),
    ("truncated.pt", [], "cannot read checkpoint {dir}/truncated.pt: it is truncated or damaged"),
    ("notes.pt", [], "cannot read checkpoint {dir}/notes.pt: it is not a file written by torch.save"),
    ("nowhere.pt", [], "checkpoint not found: {dir}/nowhere.pt"),
    ("fewshot.pt", ["hypergrad.T=0"], "hypergrad.T must be an integer >= 1, got 0"),
    ("fewshot.pt", ["task.queries=30"], "1 shots + 30 queries need 31 images per class but the split has 20"),
])
def test_bad_checkpoint_or_eval_override(checkpoints, tmp_path, name, overrides, message):
    assert _evaluate_error(checkpoints, tmp_path, name, *overrides).startswith(message.format(dir=checkpoints))


def test_checkpoint_whose_state_is_another_tasks(checkpoints, tmp_path):
    """A few-shot config with a hyper-cleaning state: refused by its contents, not with torch's many lines."""
    fewshot, cleaning = (checkpoint.load(checkpoints / f"{name}.pt") for name in ("fewshot", "cleaning"))
    checkpoint.save(tmp_path / "mixed.pt", {**fewshot, "task": cleaning["task"]})
    assert _evaluate_error(tmp_path, tmp_path, "mixed.pt").startswith(
        f"checkpoint {tmp_path}/mixed.pt lacks backbone.")


@pytest.mark.parametrize("write", [torch.save, lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2))],
                         ids=["torch.save", "plain pickle"])
def test_crafted_checkpoint_runs_no_code(tmp_path, write):
    write({"task": _Marker(tmp_path / "ran"), "config": {}}, tmp_path / "crafted.pt")
    assert _evaluate_error(tmp_path, tmp_path, "crafted.pt").startswith(
        f"checkpoint {tmp_path}/crafted.pt was not loaded: it holds ")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("flags, key", [([], "hydra.run.dir"), (["-m"], "hydra.sweep.dir")])
def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path, flags, key):
    (tmp_path / "a_file").write_text("")
    directory = tmp_path / "a_file" / "run"
    assert _error(check_overrides, [*flags, f"{key}={directory}"], CONFIG_DIR, "train") == (
        f"cannot create the run directory {directory}: {tmp_path / 'a_file'} is a file; choose another with {key}=...")
    check_overrides([*flags, f"{key}={tmp_path / 'new' / 'run'}"], CONFIG_DIR, "train")
    assert not (tmp_path / "new").exists()  # checked, not created: Hydra creates it
