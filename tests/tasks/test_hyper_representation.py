import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.data.episodes import EpisodeSampler
from bilevel_cli.models import Conv4
from bilevel_cli.tasks import HyperRepresentation

WAYS, SHOTS, QUERIES, T = 3, 2, 4, 4


@pytest.fixture
def episodes():
    torch.manual_seed(0)
    store = torch.randint(0, 256, (10, 8, 1, 16, 16), dtype=torch.uint8)
    return EpisodeSampler(store, WAYS, SHOTS, QUERIES, seed=0).sample(3)


def _task(learn_lr=True, closed_form=True, curvature_scaled_rate=False):
    torch.manual_seed(0)
    return HyperRepresentation(Conv4(channels=4), WAYS, T, inner_lr=0.3, learn_lr=learn_lr, closed_form=closed_form,
                               curvature_scaled_rate=curvature_scaled_rate).double()


def _reference_loss(task, episodes, lr):
    """The same bilevel objective written as one autograd graph: backbone, T inner steps, query loss. `lr`: one
    rate, or a function of the support features giving each episode's (B,)."""
    features = task.backbone(episodes.images.double() / 255, episodes.segments)
    support, query = features.split(episodes.segments, dim=1)
    eta = (lr(support) if callable(lr) else lr * torch.ones(len(support), dtype=torch.float64)).reshape(-1, 1, 1)
    W = torch.zeros(support.shape[0], support.shape[2], WAYS, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(support.shape[0], WAYS, dtype=torch.float64, requires_grad=True)
    for _ in range(T):
        logits = support @ W + b[:, None]
        inner = sum(F.cross_entropy(logits[e], episodes.support_labels[e]) for e in range(len(logits)))
        gW, gb = torch.autograd.grad(inner, (W, b), create_graph=True)
        W, b = W - eta * gW, b - eta[:, 0] * gb
    return F.cross_entropy((query @ W + b[:, None]).flatten(0, 1), episodes.query_labels.flatten())


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed-form", "autograd"])
def test_hypergradient_reaches_the_backbone_and_the_inner_lr_exactly(episodes, closed_form):
    """The features-as-hparams path gives the gradient of the whole unrolled objective, with the inner
    gradient in closed form (the fast path) and by autograd (the general one)."""
    task = _task(closed_form=closed_form)
    loss, _ = task.training_step(episodes)
    ours = {name: p.grad.clone() for name, p in task.named_parameters()}
    task.zero_grad()
    reference = _reference_loss(task, episodes, task.inner_lr)
    reference.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=1e-12)
    assert ours.keys() == {name for name, _ in task.named_parameters()} and "inner_lr" in ours
    for name, p in task.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert ours["inner_lr"].abs() > 0


@pytest.mark.parametrize("closed_form", [True, False], ids=["closed-form", "autograd"])
def test_a_curvature_scaled_rate_steps_each_head_at_lr_over_its_curvature_bound(episodes, closed_form):
    """curvature_scaled_rate: episode e's head steps at inner_lr/κ_e, κ_e = (mean support |x|² + 1)/N computed
    from the features as a constant (no hypergradient through it); the backbone's gradient is that objective's."""
    task = _task(learn_lr=False, closed_form=closed_form, curvature_scaled_rate=True)
    loss, _ = task.training_step(episodes)
    ours = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()

    def rates(support):
        kappa = (support.detach().square().sum(-1).mean(1) + 1) / WAYS
        return task.inner_lr / kappa

    reference = _reference_loss(task, episodes, rates)
    reference.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=1e-12)
    for mine, p in zip(ours, task.parameters()):
        torch.testing.assert_close(mine, p.grad, rtol=1e-9, atol=1e-12)
    fixed = _reference_loss(task, episodes, task.inner_lr)
    assert not torch.isclose(fixed, reference)  # the rates do differ from the fixed one


def test_the_curvature_bound_is_the_largest_eigenvalue_of_the_support_hessian_or_above():
    """κ = 1/rate_scale bounds λmax of the mean support cross-entropy's Hessian in (W, b) at the zero head, with
    equality when every support feature is the same vector (a rank-one second moment)."""
    task = HyperRepresentation(Conv4(channels=4), WAYS, T, curvature_scaled_rate=True).double()
    torch.manual_seed(0)
    random = torch.rand(2, 5, 6, dtype=torch.float64) * 3
    same = random[:, :1].expand(-1, 5, -1)
    labels = torch.arange(5) % WAYS
    for support, tight in ((random, False), (same, True)):
        kappa = 1 / task.rate_scale(support).flatten()
        for x, bound in zip(support, kappa):
            def loss(flat):
                W, b = flat[:-WAYS].view(6, WAYS), flat[-WAYS:]
                return F.cross_entropy(x @ W + b, labels)

            hessian = torch.autograd.functional.hessian(loss, torch.zeros(6 * WAYS + WAYS, dtype=torch.float64))
            largest = torch.linalg.eigvalsh(hessian)[-1]
            if tight:
                torch.testing.assert_close(largest, bound)
            else:
                assert 0.3 * bound < largest < bound


def test_a_fixed_inner_lr_is_not_an_outer_variable(episodes):
    task = _task(learn_lr=False)
    assert "inner_lr" not in dict(task.named_parameters())
    task.training_step(episodes)
    assert all(p.grad is not None for p in task.parameters())


def test_accuracy_is_per_episode_and_matches_the_training_path(episodes):
    task = _task()
    _, during_training = task.training_step(episodes, with_accuracy=True)
    accuracy = task.accuracy(episodes, [task.T])[0]
    assert accuracy.shape == (3,) and ((accuracy >= 0) & (accuracy <= 1)).all()
    torch.testing.assert_close(accuracy, during_training)


def test_accuracy_at_several_T_is_each_T_on_its_own(episodes):
    task = _task()
    together = task.accuracy(episodes, [4, 1, 2])
    for row, T in zip(together, [4, 1, 2]):
        task.T = T
        torch.testing.assert_close(row, task.accuracy(episodes, [T])[0])
    assert not (together[1] == together[0]).all()  # the steps do move the heads


def test_outer_steps_lower_the_outer_loss(episodes):
    task = _task()
    optimizer = torch.optim.Adam(task.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        losses.append(task.training_step(episodes)[0].item())
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("inner", ["momentum", "adam"])
def test_other_inner_optimizers_train(episodes, inner):
    torch.manual_seed(0)
    task = HyperRepresentation(Conv4(channels=4), WAYS, T, inner=inner, inner_lr=0.1).double()
    loss, _ = task.training_step(episodes)
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in task.parameters())


# Forward mode on gd only: it takes one pass per scalar of λ, and λ here is every feature of the meta-batch.
@pytest.mark.parametrize("inner, method", [("gd", "reverse"), ("momentum", "reverse"), ("adam", "reverse"),
                                           ("momentum", "checkpointed"), ("gd", "forward")])
def test_closed_form_inner_gradient_gives_the_autograd_hypergradient(episodes, inner, method):
    """The fast path changes how the inner gradient is computed, not the hypergradient: float64, every
    parameter, for each inner optimizer and for methods that differentiate the steps in other ways."""
    grads = {}
    for closed_form in (True, False):
        torch.manual_seed(0)
        task = HyperRepresentation(Conv4(channels=4), WAYS, 3, inner=inner, inner_lr=0.2, method=method,
                                   closed_form=closed_form).double()
        loss, _ = task.training_step(episodes)
        grads[closed_form] = {"loss": loss, **{n: p.grad for n, p in task.named_parameters()}}
    for name, value in grads[False].items():
        torch.testing.assert_close(grads[True][name], value, rtol=1e-10, atol=1e-13, msg=name)


def test_bf16_runs_the_backbone_in_bfloat16_and_keeps_the_hypergradient_in_float32(episodes):
    """trainer.precision=bf16: the backbone's convolutions under autocast, the inner problem on float32 features,
    every gradient float32 and close in direction to the float32 run's."""
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        task = HyperRepresentation(Conv4(channels=8), WAYS, T, inner_lr=0.3, precision=precision)
        loss, _ = task.training_step(episodes)
        grads = [p.grad for p in task.parameters()]
        assert loss.dtype == task.features(episodes).dtype == torch.float32
        assert all(g.dtype == torch.float32 for g in grads)
        runs[precision] = loss, torch.cat([g.flatten() for g in grads])
    (loss32, grad32), (loss16, grad16) = runs["fp32"], runs["bf16"]
    assert loss16 != loss32  # bfloat16 did run: its rounding shows in the loss
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=0)
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99
