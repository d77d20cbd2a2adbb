"""Real-time HO: the hypergradient a hyper-iteration leaves in .grad is the exact derivative of the validation loss
along a shift of λ at every inner step so far (reverse mode through the same steps, written out here), the tangents
go on across outer steps, and a checkpoint resumes the run bit for bit. Float64 where values are compared."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.data.digits import load_digits
from bilevel_cli.errors import UserError
from bilevel_cli.tasks.realtime_ho import RealTimeHO

SMALL = dict(splits=(24, 12, 12), hidden=(5,), batch=6, delta=3, lr=0.3, momentum=0.6, l2=0.05, seed=1)


def _pool():
    """48 random 3×3 images in 3 classes: 4 minibatches an epoch, so two hyper-iterations cross an epoch."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (48, 1, 3, 3), generator=g, dtype=torch.uint8), torch.arange(48) % 3


def _task(**options):
    return RealTimeHO(*_pool(), **{**SMALL, **options}).double()


def _reference_weights(task, w0, lambdas, start=0):
    """The MLP's weights after task.delta steps per λ in `lambdas`, from w0 at inner step `start`, on the task's
    minibatches, with heavy-ball momentum and L2 written out: v ← μv + ∇L + cw, w ← w − ηv. One autograd graph."""
    params = {k: w0[k].clone().requires_grad_() for k in ("W0", "b0", "W1", "b1")}
    velocity = {k: w0[f"{k}@velocity"] for k in params}
    t = start
    for lam in lambdas:
        lr, mu, l2 = lam["log_lr"].exp(), torch.sigmoid(lam["logit_momentum"]), lam["log_l2"].exp()
        for _ in range(task.delta):
            x, y = task.minibatch(t)
            grads = torch.autograd.grad(F.cross_entropy(_mlp(params, x), y), list(params.values()), create_graph=True)
            for (k, p), g in zip(list(params.items()), grads):
                velocity[k] = mu * velocity[k] + g + l2 * p
                params[k] = p - lr * velocity[k]
            t += 1
    return params


def _mlp(p, x):
    return F.relu(x @ p["W0"].T + p["b0"]) @ p["W1"].T + p["b1"]


def _validation_loss(task, params):
    x, y = task.outer_batch(0)
    return F.cross_entropy(_mlp(params, x), y)


def _snapshot(task):
    return {k: v.clone() for k, v in task.state().items()}


def _lambda(task):
    return {k: p.detach().clone() for k, p in task.named_parameters()}


def test_hypergradient_is_reverse_mode_through_the_same_steps():
    task = _task()
    w0, lam = _snapshot(task), {k: v.requires_grad_() for k, v in _lambda(task).items()}
    loss, metrics = task.hyper_iteration(with_metrics=True)

    params = _reference_weights(task, w0, [lam])
    expected = _validation_loss(task, params)
    reference = dict(zip(lam, torch.autograd.grad(expected, list(lam.values()))))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for k, p in task.named_parameters():
        assert abs(reference[k].item()) > 1e-6, "a vanishing reference proves nothing"
        torch.testing.assert_close(p.grad, reference[k], rtol=1e-9, atol=0, msg=k)
    for k, x in params.items():
        torch.testing.assert_close(task.state()[k], x.detach(), rtol=1e-12, atol=1e-14, msg=k)
    assert metrics.keys() == {"lr", "momentum", "l2", "train_acc"} and 0 <= metrics["train_acc"] <= 100
    assert (metrics["lr"], metrics["momentum"], metrics["l2"]) == pytest.approx((0.3, 0.6, 0.05), rel=1e-6)


def test_tangents_go_on_across_a_change_of_the_hyperparameters():
    """After Δ steps at λ1, a change to λ2 and Δ more, .grad is the derivative of E(w_2Δ) along a shift δ applied
    at all 2Δ steps (λ1 + δ, then λ2 + δ); restarting the tangents at the change would give another value."""
    task = _task()
    w0, lam1 = _snapshot(task), _lambda(task)
    task.hyper_iteration(with_metrics=False)
    w_mid = _snapshot(task)
    with torch.no_grad():
        for p, change in zip(task.parameters(), (0.4, -0.7, 0.9)):
            p += change
    lam2 = _lambda(task)
    task.zero_grad()
    loss, _ = task.hyper_iteration(with_metrics=False)

    delta = {k: torch.zeros((), dtype=torch.float64, requires_grad=True) for k in lam1}
    shifted = [{k: lam[k] + delta[k] for k in lam} for lam in (lam1, lam2)]
    expected = _validation_loss(task, _reference_weights(task, w0, shifted))
    full = dict(zip(delta, torch.autograd.grad(expected, list(delta.values()))))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for k, p in task.named_parameters():
        torch.testing.assert_close(p.grad, full[k], rtol=1e-9, atol=0, msg=k)

    restarted = _validation_loss(task, _reference_weights(task, w_mid, [shifted[1]], start=task.delta))
    last_steps_only = torch.autograd.grad(restarted, list(delta.values()))
    assert any(abs(g - full[k]) > 1e-3 * abs(full[k]) for k, g in zip(delta, last_steps_only))


def test_a_checkpoint_resumes_the_run_exactly():
    """state_dict through torch.save/torch.load(weights_only) restores w, Z, λ and the step counters into a task
    that had drifted elsewhere; the next hyper-iteration is then bit for bit that of the original."""
    original = _task()
    optimizer = torch.optim.Adam(original.parameters(), 0.1)
    for _ in range(2):
        optimizer.zero_grad()
        original.hyper_iteration(with_metrics=False)
        optimizer.step()
    saved = io.BytesIO()
    torch.save(original.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    assert {"log_lr", "w/W0", "w/W0@velocity", "Z/log_l2/b1@velocity", "_extra_state"} <= state.keys()
    assert not any("images" in k or "labels" in k for k in state), "the data are no part of a checkpoint"
    assert state["Z/log_lr/W0"].abs().sum() > 0

    resumed = _task(seed=SMALL["seed"])
    resumed.hyper_iteration(with_metrics=False)
    resumed.load_state_dict(state)
    _assert_same_state(resumed, original)

    original.zero_grad()
    resumed.zero_grad()
    loss, _ = original.hyper_iteration(with_metrics=False)
    assert torch.equal(resumed.hyper_iteration(with_metrics=False)[0], loss)
    for p, q in zip(original.parameters(), resumed.parameters()):
        assert torch.equal(p.grad, q.grad)
    _assert_same_state(resumed, original)


def _assert_same_state(task, other):
    state = task.state_dict()
    assert state.keys() == other.state_dict().keys()
    for k, v in other.state_dict().items():
        assert torch.equal(state[k], v) if torch.is_tensor(v) else state[k] == v, k


def test_minibatches_are_epochs_of_the_training_split_and_validation_batches_are_drawn_alike():
    task = _task(val_batch=4)
    per_epoch = SMALL["splits"][0] // SMALL["batch"]
    epoch = torch.cat([task.minibatch(t)[0] for t in range(per_epoch)])
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, task._inputs(task.train_images).tolist()))
    assert torch.equal(task.minibatch(5)[0], _task().minibatch(5)[0])
    assert not torch.equal(task.minibatch(5)[0], _task(seed=2).minibatch(5)[0])
    assert not torch.equal(task.minibatch(1)[0], task.minibatch(1 + per_epoch)[0]), "each epoch a new order"
    first, second = task.outer_batch(0), task.outer_batch(1)
    assert first[0].shape == (4, 9) and not torch.equal(first[0], second[0])
    assert _task().outer_batch(0)[0].shape == (12, 9)


@pytest.mark.parametrize("options, message", [
    ({"splits": (30, 10, 10)}, "need 50 images"),
    ({"batch": 25}, "batch <= 24"),
    ({"momentum": 1.0}, "0 < momentum < 1"),
])
def test_bad_settings_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        _task(**options)


def test_a_short_run_on_digits_tunes_the_hyperparameters():
    """30 hyper-iterations of Adam from a too small learning rate: it rises, momentum and L2 move, and the
    weights trained along the way classify the held-out digits well."""
    data = load_digits()
    task = RealTimeHO(data["images"], data["labels"], splits=(1000, 400, 397), hidden=(32,), batch=50, delta=5,
                      lr=0.02, momentum=0.5, l2=1e-3, seed=0)
    before = task.current_hyperparameters()
    optimizer = torch.optim.Adam(task.parameters(), 0.05)
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = task.hyper_iteration(with_metrics=False)
        optimizer.step()
    after = task.current_hyperparameters()
    assert after["lr"] > 1.5 * before["lr"]
    assert abs(after["momentum"] - before["momentum"]) > 0.02
    assert abs(math.log(after["l2"] / before["l2"])) > 0.1
    assert task.validate()["val_acc"] > 75  # chance is 10%; 89% on the reference machine
    test = task.test()
    assert test["test_acc"] > 70 and test["inner_steps"] == 150 and test["lr"] == after["lr"]
