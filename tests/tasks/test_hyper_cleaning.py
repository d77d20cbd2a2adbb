"""Data hyper-cleaning: the corruption, the hypergradient against one autograd graph, the box constraint, and
the scores of the test (baseline, oracle, detection)."""

import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.data.digits import load_digits
from bilevel_cli.errors import UserError
from bilevel_cli.tasks.hyper_cleaning import HyperCleaning

SIZES = dict(train=60, val=40, test=50, corrupted=20)


def _pool(n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8), torch.arange(n) % 5


def _task(parametrization="projection", T=6, **options):
    images, labels = _pool()
    return HyperCleaning(images, labels, **SIZES, T=T, inner_lr=0.5, parametrization=parametrization,
                         seed=3, **options).double()


def test_corruption_flips_exactly_the_flagged_labels_to_other_classes():
    images, labels = _pool()
    task = _task()
    original = labels[:SIZES["train"]]
    changed = task.y_train != original
    assert torch.equal(changed, task.is_corrupted) and int(changed.sum()) == SIZES["corrupted"]
    assert torch.equal(task.y_val, labels[60:100]) and torch.equal(task.y_test, labels[100:150])
    assert torch.equal(_task().y_train, task.y_train)  # the seed fixes the corruption
    other = HyperCleaning(images, labels, **SIZES, T=1, seed=4)
    assert not torch.equal(other.is_corrupted, task.is_corrupted)


@pytest.mark.parametrize("parametrization", ["projection", "sigmoid"])
def test_hypergradient_is_that_of_the_unrolled_objective(parametrization):
    """ω.grad after a hyper-iteration equals autograd through T plain gradient steps written out here."""
    task = _task(parametrization)
    with torch.no_grad():
        task.omega.uniform_(0.2, 0.9)
    loss, _ = task.hyper_iteration(with_metrics=False)

    omega = task.omega.detach().clone().requires_grad_()
    weights = omega if parametrization == "projection" else torch.sigmoid(omega)
    W = torch.zeros(16, 5, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    for _ in range(6):
        inner = (weights * F.cross_entropy(task.x_train @ W + b, task.y_train, reduction="none")).mean()
        gW, gb = torch.autograd.grad(inner, (W, b), create_graph=True)
        W, b = W - 0.5 * gW, b - 0.5 * gb
    outer = F.cross_entropy(task.x_val @ W + b, task.y_val)
    expected, = torch.autograd.grad(outer, omega)
    assert loss.item() == pytest.approx(outer.item(), rel=1e-12)
    torch.testing.assert_close(task.omega.grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("parametrization", ["projection", "sigmoid"])
def test_reversible_with_momentum_is_reverse_mode(parametrization):
    """With momentum as the inner optimizer, reversible learning leaves reverse mode's ω.grad (float64; 1e-9 is ample
    for fixed-point steps on a 2^-44 grid), through either parametrization: the task hands the optimizer's step to
    the method unwrapped."""
    grads = {}
    for method in ("reverse", "reversible"):
        task = _task(parametrization, inner="momentum", inner_options={"momentum": 0.875}, method=method)
        with torch.no_grad():
            task.omega.uniform_(0.2, 0.9, generator=torch.Generator().manual_seed(0))
        task.hyper_iteration(with_metrics=False)
        grads[method] = task.omega.grad
    assert grads["reverse"].abs().max() > 1e-6
    torch.testing.assert_close(grads["reversible"], grads["reverse"], rtol=1e-9, atol=1e-14)


def test_evograd_hyper_iteration_is_seeded():
    """EvoGrad through the task: a seed gives the same ω.grad at every call from the same ω, another seed another
    one; the estimate is finite and not zero."""
    def grad(seed):
        task = _task(method="evograd", method_options={"K": 4, "sigma": 0.01, "tau": 0.05, "seed": seed})
        task.hyper_iteration(with_metrics=False)
        return task.omega.grad

    first, again, other = grad(1), grad(1), grad(2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.isfinite(first).all() and first.abs().max() > 0


def test_projection_keeps_the_weights_in_the_box():
    task = _task()
    with torch.no_grad():
        task.omega.copy_(torch.linspace(-1, 2, SIZES["train"]))
    task.constrain()
    assert task.omega.min() == 0 and task.omega.max() == 1
    sigmoid, raw = _task("sigmoid"), torch.linspace(-5, 5, SIZES["train"], dtype=torch.float64)
    with torch.no_grad():
        sigmoid.omega.copy_(raw)
    sigmoid.constrain()  # nothing to project: σ keeps ω in (0, 1)
    assert torch.equal(sigmoid.omega, raw)
    assert 0 < sigmoid.weights().min() < 0.01 and 0.99 < sigmoid.weights().max() < 1


def test_test_scores_baseline_oracle_and_detection():
    """With ω = the clean mask the model is the oracle and the detection is perfect; with ω = 1 the baseline."""
    task = _task()
    with torch.no_grad():
        task.omega.copy_((~task.is_corrupted).double())
    scores = task.test()
    assert scores["test_acc"] == scores["test_acc_oracle"]
    assert scores["precision"] == scores["recall"] == scores["f1"] == 1.0
    assert scores["flagged"] == scores["corrupted"] == SIZES["corrupted"]
    with torch.no_grad():
        task.omega.fill_(1.0)
    scores = task.test()
    assert scores["test_acc"] == scores["test_acc_baseline"] and scores["flagged"] == 0 and scores["f1"] == 0.0


def test_bad_sizes_are_user_errors():
    images, labels = _pool(100)
    with pytest.raises(UserError, match="needs train \\+ val \\+ test = 150 examples but the data set has 100"):
        HyperCleaning(images, labels, **SIZES, T=1)
    with pytest.raises(UserError, match="task.corrupted must be in"):
        HyperCleaning(images, labels, train=10, val=10, test=10, corrupted=11, T=1)
    with pytest.raises(UserError, match="unknown task.parametrization 'tanh'"):
        HyperCleaning(images, labels, train=10, val=10, test=10, corrupted=1, T=1, parametrization="tanh")


def test_hyper_cleaning_finds_the_corrupted_digits():
    """Forty outer steps on the embedded digits: the corrupted examples lose most of their weight, and the
    cleaned model beats the baseline trained on every example."""
    torch.manual_seed(0)
    digits = load_digits()
    task = HyperCleaning(digits["images"], digits["labels"], train=300, val=200, test=400, corrupted=150, T=30,
                         inner_lr=1.0)
    optimizer = torch.optim.Adam(task.parameters(), 0.05)
    for _ in range(40):
        optimizer.zero_grad()
        task.hyper_iteration(with_metrics=False)
        optimizer.step()
        task.constrain()
    weights, scores = task.weights(), task.test()
    assert weights[task.is_corrupted].mean() < 0.5 * weights[~task.is_corrupted].mean()
    assert scores["f1"] > 0.7 and scores["test_acc"] > scores["test_acc_baseline"]
