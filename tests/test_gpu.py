"""On a CUDA GPU (skipped without one): the hypergradient is the CPU's, a hyper-iteration never waits for the GPU,
bf16 autocast covers the backbone alone, and `bilevel train` runs there end to end. The first check to run when a
GPU is at hand: `pytest tests/test_gpu.py`."""

import copy
import dataclasses
import json
import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from bilevel_cli.cli import CONFIG_DIR
from bilevel_cli.data.episodes import Episodes, EpisodeSampler
from bilevel_cli.engine.build import build_data, build_task
from bilevel_cli.models import Conv4
from bilevel_cli.tasks import HyperRepresentation

# BILEVEL_TEST_DEVICE=cpu runs these checks on the CPU, to try a change to this file on a machine without a GPU.
DEVICE = torch.device(os.environ.get("BILEVEL_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _episodes(ways=5, shots=1, queries=3, batch=4) -> Episodes:
    torch.manual_seed(0)
    store = torch.randint(0, 256, (12, 6, 1, 28, 28), dtype=torch.uint8)
    return EpisodeSampler(store, ways, shots, queries, seed=0).sample(batch)


def _on(episodes: Episodes, device: torch.device) -> Episodes:
    return Episodes(**{f.name: getattr(episodes, f.name).to(device) for f in dataclasses.fields(episodes)})


def _task(**options) -> HyperRepresentation:
    torch.manual_seed(0)
    return HyperRepresentation(Conv4(channels=8), ways=5, T=5, inner_lr=0.3, **options)


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed-form", "autograd"])
def test_the_hypergradient_on_the_device_is_the_cpus(closed_form):
    episodes = _episodes()
    on_cpu = _task(closed_form=closed_form).double()
    on_device = copy.deepcopy(on_cpu).to(DEVICE)
    loss_cpu, _ = on_cpu.training_step(episodes)
    loss_device, _ = on_device.training_step(_on(episodes, DEVICE))
    torch.testing.assert_close(loss_device.cpu(), loss_cpu, rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(on_cpu.named_parameters(), on_device.parameters(), strict=True):
        assert q.grad.device.type == DEVICE.type
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_episodes_are_drawn_and_gathered_on_the_device():
    store = torch.randint(0, 256, (12, 6, 1, 28, 28), dtype=torch.uint8, device=DEVICE)
    episodes = EpisodeSampler(store, 5, 1, 3, seed=0).sample(4)
    for f in dataclasses.fields(episodes):
        assert getattr(episodes, f.name).device.type == DEVICE.type, f.name
    assert episodes.images.shape == (4, 5 * (1 + 3), 1, 28, 28)


def test_bf16_runs_the_backbone_in_bfloat16_and_the_hypergradient_in_float32():
    episodes = _on(_episodes(), DEVICE)
    full = _task().to(DEVICE)
    half = copy.deepcopy(full)
    half.precision = "bf16"
    conv_outputs = []
    half.backbone.convs[0].register_forward_hook(lambda module, args, out: conv_outputs.append(out.dtype))
    loss_full, _ = full.training_step(episodes)
    loss_half, _ = half.training_step(episodes)
    assert conv_outputs == [torch.bfloat16]
    assert loss_half.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in half.parameters())
    torch.testing.assert_close(loss_half, loss_full, rtol=0.05, atol=0)


def test_a_hyper_iteration_does_not_wait_for_the_device(glyph_root):
    """No .item(), no copy to the host, no synchronization between the sampler and the outer step: the host can
    queue the next hyper-iteration while the GPU runs this one (the engine syncs only to log and to check
    finiteness)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={glyph_root}", "task.meta_batch=4", "backbone.channels=8"])
    task = build_task(cfg, build_data(cfg, DEVICE))
    task.hyper_iteration(with_metrics=False)  # warm-up: cuDNN picks its algorithms, the allocator its blocks
    if DEVICE.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        loss, metrics = task.hyper_iteration(with_metrics=False)
    finally:
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == DEVICE.type and metrics is None
    assert all(p.grad is not None and p.grad.device.type == DEVICE.type for p in task.parameters())


@pytest.mark.slow
def test_train_runs_on_the_device_end_to_end(bilevel, tmp_path):
    bilevel("train", f"device={DEVICE}", "trainer.steps=40", "trainer.log_every=10", "trainer.val_every=20",
            "trainer.val_episodes=20", "trainer.test_episodes=40", "trainer.select_T=[3,5]")
    (summary,) = tmp_path.glob("outputs/train/*/summary.json")
    summary = json.loads(summary.read_text())
    assert summary["device"].startswith(DEVICE.type) and summary["test_episodes"] == 40
    assert 20 < summary["test_acc"] <= 100 and summary["test_T"] in (3, 5)  # 20%: chance on 5-way episodes
