import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.tasks.linear_representation import LinearRepresentation

CLASSES, TRAIN, VAL, DIM, T, LR, RIDGE = 5, 2, 2, 4, 6, 0.5, 0.01


@pytest.fixture(scope="module")
def store():
    """12 classes of 8 random 6×6 images: every image distinct."""
    return torch.randint(0, 256, (12, 8, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _task(store, **settings):
    settings = {"classes": CLASSES, "train_per_class": TRAIN, "val_per_class": VAL, "dim": DIM, "inner_lr": LR,
                "ridge": RIDGE, "init_std": 0.3, **settings}
    return LinearRepresentation(store, settings.pop("T", T), **settings).double()


def _ell(scores, labels, loss):
    if loss == "cross_entropy":
        return F.cross_entropy(scores, labels)
    return 0.5 * ((scores - F.one_hot(labels, CLASSES).double()) ** 2).sum(1).mean()


def _unrolled_objective(task, H, lr, loss, steps=T):
    """The T-step outer objective written as one autograd graph: features, `steps` gd steps from zero, E."""
    train, val = task.x_train @ H, task.x_val @ H
    W = torch.zeros(DIM, CLASSES, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(CLASSES, dtype=torch.float64, requires_grad=True)
    for _ in range(steps):
        inner = _ell(train @ W + b, task.y_train, loss) + RIDGE / 2 * (W ** 2).sum()
        gW, gb = torch.autograd.grad(inner, (W, b), create_graph=True)
        W, b = W - lr * gW, b - lr * gb
    return _ell(val @ W + b, task.y_val, loss)


def _outer_objective(task, H):
    with torch.no_grad():
        task.H.copy_(H)
    return task.evaluate(["val"])["val"]["loss"]


def test_the_split_takes_distinct_drawings_of_distinct_classes(store):
    task = LinearRepresentation(store, T, classes=CLASSES, train_per_class=TRAIN, val_per_class=VAL, centre=False)
    counts = {"train": TRAIN, "val": VAL, "test": 8 - TRAIN - VAL}  # the test split takes the drawings left
    for split, count in counts.items():
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
        assert x.shape == (CLASSES * count, 36) and y.tolist() == [c for c in range(CLASSES) for _ in range(count)]
    images = torch.cat([task.x_train, task.x_val, task.x_test]) * 255
    flat = store.flatten(2).double()
    found = [(flat == image.round().double()).all(-1).nonzero().tolist() for image in images]
    assert all(len(f) == 1 for f in found)  # each is one image of the store
    drawings = {tuple(f[0]) for f in found}
    assert len(drawings) == len(images) and len({c for c, _ in drawings}) == CLASSES  # none used twice
    again = LinearRepresentation(store, T, classes=CLASSES, train_per_class=TRAIN, val_per_class=VAL, centre=False)
    other = LinearRepresentation(store, T, classes=CLASSES, train_per_class=TRAIN, val_per_class=VAL, centre=False,
                                 seed=1)
    assert torch.equal(again.x_val, task.x_val) and not torch.equal(other.x_val, task.x_val)


@pytest.mark.parametrize("loss, learn_lr", [("cross_entropy", False), ("squared", False), ("squared", True)])
def test_hypergradient_is_the_gradient_of_the_unrolled_objective(store, loss, learn_lr):
    task = _task(store, loss=loss, learn_lr=learn_lr)
    value, _ = task.hyper_iteration(with_metrics=False)
    ours = {name: p.grad.clone() for name, p in task.named_parameters()}
    H = task.H.detach().clone().requires_grad_()
    lr = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    reference = _unrolled_objective(task, H, lr, loss)
    reference.backward()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours["H"], H.grad, rtol=1e-9, atol=1e-12)
    assert ours.keys() == ({"H", "inner_lr"} if learn_lr else {"H"})
    if learn_lr:
        torch.testing.assert_close(ours["inner_lr"], lr.grad, rtol=1e-9, atol=1e-12)


def test_another_exact_method_gives_the_same_hypergradient(store):
    grads = {}
    for method, options in (("reverse", {}), ("checkpointed", {"segment": 4})):
        task = _task(store, method=method, method_options=options)
        task.hyper_iteration(with_metrics=False)
        grads[method] = task.H.grad
    torch.testing.assert_close(grads["checkpointed"], grads["reverse"], rtol=1e-9, atol=1e-12)


def test_exact_hypergradient_matches_central_finite_differences(store):
    task = _task(store, loss="squared", exact=True)
    value, _ = task.hyper_iteration(with_metrics=False)
    grad, H = task.H.grad.clone(), task.H.detach().clone()
    assert value.item() == pytest.approx(_outer_objective(task, H), rel=1e-12)
    directions = torch.randn(3, *H.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = 1e-6
    for v in directions:
        numeric = (_outer_objective(task, H + eps * v) - _outer_objective(task, H - eps * v)) / (2 * eps)
        assert (grad * v).sum().item() == pytest.approx(numeric, rel=1e-6, abs=1e-10)


def test_the_T_step_objective_approaches_the_exact_one(store):
    """Gradient descent on the strongly convex squared loss converges to the closed-form minimizer, so at a fixed H
    E_T falls to E as T grows: the core's T steps and torch.linalg.solve agree."""
    exact = _task(store, loss="squared", exact=True).evaluate(["val"])["val"]["loss"]
    gaps = [abs(_task(store, loss="squared", T=steps).evaluate(["val"])["val"]["loss"] - exact)
            for steps in (10, 100, 2000)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-9 * exact


@pytest.mark.parametrize("settings", [{"loss": "cross_entropy"}, {"loss": "squared"},
                                      {"loss": "squared", "exact": True}])
def test_adam_on_H_lowers_the_outer_loss(store, settings):
    task = _task(store, **settings)
    optimizer = torch.optim.Adam(task.parameters(), 1e-2)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        losses.append(task.hyper_iteration(with_metrics=False)[0].item())
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0]


def test_metrics_validation_and_test_report_the_current_H(store):
    task = _task(store, loss="squared")
    loss, metrics = task.hyper_iteration(with_metrics=True)
    assert metrics.keys() == {"train_acc", "train_loss"} and 0 <= metrics["train_acc"] <= 100
    val, test = task.validate(), task.test()
    assert val.keys() == {"val_acc", "val_loss"} and val["val_loss"] == pytest.approx(loss.item(), rel=1e-12)
    assert test["outer_objective"] == val["val_loss"] and test["T"] == T and test["exact"] is False
    assert 0 <= test["test_acc"] <= 100 and test["test_loss"] > 0


@pytest.mark.parametrize("settings, message", [
    ({"exact": True}, "exact=True solves the squared-loss inner problem"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"classes": 13}, r"classes must be in \[2, 12\]"),
    ({"test_per_class": 5}, "sum to at most the store's 8 per class"),
])
def test_impossible_settings_are_refused(store, settings, message):
    with pytest.raises(ValueError, match=message):
        _task(store, **settings)
