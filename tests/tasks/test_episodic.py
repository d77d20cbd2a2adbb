import math

import torch

from bilevel_cli.tasks.episodic import evaluate, select_T
from bilevel_cli.models import Conv4
from bilevel_cli.tasks import HyperRepresentation

PROTOCOL = dict(ways=3, shots=1, queries=3, seed=7, batch=4)


def _task_and_store():
    torch.manual_seed(0)
    store = torch.randint(0, 256, (12, 6, 1, 16, 16), dtype=torch.uint8)
    return HyperRepresentation(Conv4(channels=4), ways=3, T=2, inner_lr=0.5), store


def test_evaluate_is_the_mean_over_fixed_episodes_with_a_95_ci():
    task, store = _task_and_store()
    a = evaluate(task, store, episodes=10, **PROTOCOL)
    b = evaluate(task, store, episodes=10, **{**PROTOCOL, "batch": 3})  # same episodes, other chunking
    assert a["episodes"] == 10 and math.isclose(a["acc"], b["acc"], rel_tol=1e-6)
    assert 0 <= a["acc"] <= 100 and a["ci95"] > 0
    assert evaluate(task, store, episodes=10, **{**PROTOCOL, "seed": 8})["acc"] != a["acc"]
    assert task.training  # evaluation restores the mode it found


def test_select_T_keeps_the_best_validation_T():
    task, store = _task_and_store()
    scores = select_T(task, store, [1, 4, 16], episodes=12, **PROTOCOL)
    assert list(scores) == [1, 4, 16] and task.T == max(scores, key=scores.get)
    for T, accuracy in scores.items():
        task.T = T
        assert math.isclose(evaluate(task, store, episodes=12, **PROTOCOL)["acc"], accuracy, rel_tol=1e-6)


def test_select_T_runs_the_backbone_once_for_all_candidates():
    task, store = _task_and_store()
    passes = []
    task.backbone.register_forward_hook(lambda *_: passes.append(1))
    select_T(task, store, [1, 4, 16], episodes=12, **PROTOCOL)
    assert len(passes) == 3  # 12 episodes in chunks of 4, whatever the number of candidates
