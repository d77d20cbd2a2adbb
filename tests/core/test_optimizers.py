"""Tests of the differentiable inner optimizers `bilevel_cli.core.optimizers` (gd, momentum, adam).

Conventions are checked against `torch.optim` (SGD, SGD with momentum, Adam) step by step; then the
state layout, the no-grad / grad-mode behaviour, and Adam's finiteness at exactly-zero gradients.
Everything is float64.
"""

import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.core import InnerOptimizer, adam, gd, hypergradient, momentum

DTYPE = torch.float64
N_STEPS = 5


def softmax_regression_loss(d):
    """Mean cross-entropy of a linear classifier with weight W (4×3) and bias b (3): two parameters,
    so that per-parameter buffers are exercised."""
    def loss(p, h):
        return F.cross_entropy(d["X"] @ p["W"] + p["b"], d["y"])
    return loss


def initial_params():
    gen = torch.Generator().manual_seed(3)
    return {"W": 0.3 * torch.randn(4, 3, generator=gen, dtype=DTYPE),
            "b": 0.1 * torch.randn(3, generator=gen, dtype=DTYPE)}


def torch_optim_trajectory(d, make_optim, n_steps):
    """Parameters after each of `n_steps` steps of a torch.optim optimizer on copies of the initial
    parameters (the reference)."""
    params = {k: v.clone().requires_grad_() for k, v in initial_params().items()}
    optim = make_optim(list(params.values()))
    loss = softmax_regression_loss(d)
    trajectory = []
    for _ in range(n_steps):
        optim.zero_grad()
        loss(params, {}).backward()
        optim.step()
        trajectory.append({k: v.detach().clone() for k, v in params.items()})
    return trajectory


def hyper(value, as_name: bool, name: str, hparams: dict):
    """A hyperparameter given either as a number or as the name of a (grad-requiring) hparams entry."""
    if not as_name:
        return value
    hparams[name] = torch.tensor(value, dtype=DTYPE, requires_grad=True)
    return name


# (name, builder of our optimizer, builder of the torch.optim reference)
CASES = {
    "gd": (
        lambda loss, h, n: gd(loss, lr=hyper(0.4, n, "lr", h), weight_decay=hyper(0.05, n, "wd", h)),
        lambda ps: torch.optim.SGD(ps, lr=0.4, weight_decay=0.05),
    ),
    "momentum": (
        lambda loss, h, n: momentum(loss, lr=hyper(0.2, n, "lr", h), momentum=hyper(0.7, n, "mu", h),
                                    weight_decay=hyper(0.05, n, "wd", h)),
        lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.7, weight_decay=0.05),
    ),
    "adam": (
        lambda loss, h, n: adam(loss, lr=hyper(0.03, n, "lr", h), betas=(0.8, 0.95), eps=1e-6,
                                weight_decay=hyper(0.05, n, "wd", h), eps_root=0.0),
        lambda ps: torch.optim.Adam(ps, lr=0.03, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05),
    ),
}


@pytest.mark.parametrize("as_name", [False, True], ids=["numbers", "hparam-names"])
@pytest.mark.parametrize("name", list(CASES))
def test_steps_match_torch_optim(classification_data, name, as_name):
    """Under no_grad, N_STEPS steps of our optimizer give the same parameters (rtol 1e-12) as
    torch.optim after each step: heavy-ball v ← μv + g, w ← w − lr·v; Adam with bias correction
    (eps_root = 0 to match PyTorch); L2 weight decay added to the gradient. Hyperparameters are given
    as numbers or as names of hparams tensors; both must agree with the reference."""
    build, reference = CASES[name]
    hparams = {}
    opt = build(softmax_regression_loss(classification_data), hparams, as_name)
    expected = torch_optim_trajectory(classification_data, reference, N_STEPS)
    state = opt.init(initial_params())
    with torch.no_grad():
        for t in range(N_STEPS):
            state = opt.step(state, hparams, t)
            for k in ("W", "b"):
                torch.testing.assert_close(state[k], expected[t][k], rtol=1e-12, atol=1e-14)


def test_momentum_is_not_plain_gd(classification_data):
    """Guard for the comparison above: after two steps momentum differs from gd with the same lr, so
    a momentum that ignored its velocity would be caught."""
    loss = softmax_regression_loss(classification_data)
    with torch.no_grad():
        a, b = momentum(loss, lr=0.2, momentum=0.7), gd(loss, lr=0.2)
        sa, sb = a.init(initial_params()), b.init(initial_params())
        for t in range(2):
            sa, sb = a.step(sa, {}, t), b.step(sb, {}, t)
    assert (sa["W"] - sb["W"]).abs().max() > 1e-3


@pytest.mark.parametrize("name,buffers", [("gd", []), ("momentum", ["velocity"]), ("adam", ["m", "v"])])
def test_init_state_keys_and_zero_buffers(classification_data, name, buffers):
    """init(params) keeps the parameters under their names (same values) and adds zero buffers
    "<name>@<buffer>" of each parameter's shape; step returns a state with the same keys."""
    build, _ = CASES[name]
    opt = build(softmax_regression_loss(classification_data), {}, False)
    assert isinstance(opt, InnerOptimizer)
    params = initial_params()
    state = opt.init(params)
    expected_keys = {"W", "b"} | {f"{p}@{buf}" for p in ("W", "b") for buf in buffers}
    assert set(state) == expected_keys
    for p in ("W", "b"):
        assert torch.equal(state[p], params[p])
        for buf in buffers:
            assert torch.equal(state[f"{p}@{buf}"], torch.zeros_like(params[p]))
    with torch.no_grad():
        assert set(opt.step(state, {}, 0)) == expected_keys
    assert set(params) == {"W", "b"}, "init must not add buffers to the caller's dict"


@pytest.mark.parametrize("name", list(CASES))
def test_no_grad_step_returns_plain_tensors(classification_data, name):
    """Under torch.no_grad() a step returns tensors with no graph, even when the hyperparameters are
    grad-requiring hparams and the parameters themselves require grad."""
    build, _ = CASES[name]
    hparams = {}
    opt = build(softmax_regression_loss(classification_data), hparams, True)
    state = {k: v.requires_grad_() if "@" not in k else v for k, v in opt.init(initial_params()).items()}
    with torch.no_grad():
        new = opt.step(opt.step(state, hparams, 0), hparams, 1)
    for k, v in new.items():
        assert not v.requires_grad and v.grad_fn is None, k


def test_gd_step_has_graph_to_lr(classification_data):
    """With grad enabled and lr an hparam tensor, the new parameters are connected to it:
    d w_1/d lr = −∇L(w_0) exactly for gd (checked for the sum over W's entries)."""
    loss = softmax_regression_loss(classification_data)
    lr = torch.tensor(0.4, dtype=DTYPE, requires_grad=True)
    opt = gd(loss, lr="lr")
    params = initial_params()
    new = opt.step(opt.init(params), {"lr": lr}, 0)
    assert new["W"].requires_grad and new["W"].grad_fn is not None
    (d_lr,) = torch.autograd.grad(new["W"].sum(), lr)
    leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
    (g_W,) = torch.autograd.grad(loss(leaf, {}), leaf["W"])
    torch.testing.assert_close(d_lr, -g_W.sum(), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_buffered_steps_have_graph_to_hparams(classification_data, name):
    """For momentum and adam, with grad enabled, two steps' parameters and buffers depend on the lr and
    weight-decay hparams (and momentum on μ): autograd gives finite, nonzero derivatives."""
    build, _ = CASES[name]
    hparams = {}
    opt = build(softmax_regression_loss(classification_data), hparams, True)
    state = opt.init(initial_params())
    for t in range(2):
        state = opt.step(state, hparams, t)
    assert state["W"].grad_fn is not None
    derivs = torch.autograd.grad(state["W"].sum(), list(hparams.values()))
    for k, g in zip(hparams, derivs):
        assert torch.isfinite(g) and g.abs() > 1e-8, k


def test_step_differentiates_through_inner_gradient(ridge_data):
    """With grad enabled the step keeps the graph of ∇L (create_graph): for L = ½‖Xw − y‖² the Jacobian
    of one gd step is I − lr·XᵀX, which needs the Hessian term; without it it would be the identity."""
    X, y, lr = ridge_data["X"], ridge_data["y"], 0.01
    opt = gd(lambda p, h: 0.5 * ((X @ p["w"] - y) ** 2).sum(), lr=lr)
    w0 = torch.randn(5, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    jac = torch.autograd.functional.jacobian(lambda w: opt.step({"w": w}, {}, 0)["w"], w0)
    torch.testing.assert_close(jac, torch.eye(5, dtype=DTYPE) - lr * X.T @ X, rtol=1e-12, atol=1e-14)


def zero_column_problem(d):
    """Softmax regression whose last input feature is identically zero, so the gradient of the last
    row of W is exactly zero at every step."""
    X = d["X"].clone()
    X[:, -1] = 0.0
    Xv = d["Xv"].clone()
    Xv[:, -1] = 0.0

    def inner(p, h):
        return F.cross_entropy(X @ p["W"], d["y"])

    def outer(w, h):
        return F.cross_entropy(Xv @ w["W"], d["yv"])

    return inner, outer


def test_adam_hypergradient_finite_at_zero_gradient_coordinate(classification_data):
    """A gradient coordinate that is exactly zero makes v = 0, where √v has an infinite slope; with the
    default eps_root inside the square root the hypergradient w.r.t. lr stays finite (and nonzero),
    while the same run with eps_root = 0 produces NaN (so this test does detect the problem)."""
    inner, outer = zero_column_problem(classification_data)
    w0 = {"W": torch.zeros(4, 3, dtype=DTYPE)}

    def lr_grad(**kw):
        opt = adam(inner, lr="lr", **kw)
        lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
        return hypergradient(opt.step, outer, opt.init(w0), {"lr": lr}, 5)[1]["lr"]

    g = lr_grad()
    assert torch.isfinite(g) and g.abs() > 1e-6
    assert torch.isnan(lr_grad(eps_root=0.0))


def test_adam_hypergradient_finite_with_unused_parameter(classification_data):
    """A whole parameter the inner loss does not use (gradient identically zero) is carried along by
    adam unchanged, and the hypergradient stays finite."""
    d = classification_data

    def inner(p, h):
        return F.cross_entropy(d["X"] @ p["W"], d["y"])

    def outer(w, h):
        return F.cross_entropy(d["Xv"] @ w["W"], d["yv"]) + (w["unused"] ** 2).sum()

    opt = adam(inner, lr="lr")
    w0 = opt.init({"W": torch.zeros(4, 3, dtype=DTYPE), "unused": torch.ones(2, dtype=DTYPE)})
    lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
    _, grads = hypergradient(opt.step, outer, w0, {"lr": lr}, 5)
    assert torch.isfinite(grads["lr"])


@pytest.mark.parametrize("build, message", [
    (lambda loss: momentum(loss, 0.1, momentum=1.5), r"momentum must be in \[0, 1\], got 1.5"),
    (lambda loss: gd(loss, 0.1, weight_decay=-0.1), r"weight_decay must be >= 0, got -0.1"),
    (lambda loss: adam(loss, 0.1, betas=(0.9, 1.0)), r"betas must be in \[0, 1\), got \(0.9, 1.0\)"),
    (lambda loss: adam(loss, 0.1, eps=-1e-8), r"eps must be >= 0, got -1e-08"),
])
def test_hyperparameters_out_of_range_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build(lambda w, h: w["w"].sum())


def test_hyperparameters_named_or_at_the_bounds_are_accepted():
    loss = lambda w, h: w["w"].sum()  # noqa: E731
    momentum(loss, 0.1, momentum="mu")  # an outer variable: its value is the outer loop's to keep
    momentum(loss, 0.1, momentum=1.0)
    adam(loss, 0.1, betas=(0.0, 0.999), eps=0.0)
