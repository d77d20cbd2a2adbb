"""Tests of EvoGrad (`method="evograd"`): the estimator written out by hand, its limit (the hypergradient of one
gradient step of rate σ²/τ), the determinism its seed gives, and its contract (T = 0, buffers, errors).

The problem is softmax regression on per-example weights, the hyper-cleaning problem in small. Everything is float64.
"""

import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.core import gd, hypergradient, momentum
from problems import DTYPE

SIGMA, TAU = 1e-3, 0.05


def weighted_problem(d, opt=gd, **settings):
    """(step, E, w0, hparams, loss): L(W, ω) = mean_i ω_i·ℓ_i(W) on the 20 training examples, ω the hparams; E the
    validation cross-entropy; W starts at a fixed random point (at zero the classes would be symmetric)."""
    def loss(p, h):
        return (h["omega"] * F.cross_entropy(d["X"] @ p["W"], d["y"], reduction="none")).mean()

    def outer(w, h):
        return F.cross_entropy(d["Xv"] @ w["W"], d["yv"])

    gen = torch.Generator().manual_seed(7)
    inner = opt(loss, lr=0.5, **settings)
    omega = torch.rand(20, generator=gen, dtype=DTYPE).requires_grad_()
    w0 = inner.init({"W": 0.5 * torch.randn(4, 3, generator=gen, dtype=DTYPE)})
    return inner.step, outer, w0, {"omega": omega}, loss


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def test_estimator_is_the_papers_formula(classification_data):
    """K = 3 copies from w_{T−1} (T = 4), the noise redrawn here from the same seed: w_T = Σ_k p_k θ_k with
    p = softmax(−L(θ_k)/τ), and dE/dω = Σ_k (∇E(w_T)·θ_k)·dp_k/dω with dp_k/dω = −(p_k/τ)(∂L(θ_k)/∂ω − Σ_j p_j
    ∂L(θ_j)/∂ω), written out with first derivatives only."""
    step, outer, w0, hparams, loss = weighted_problem(classification_data)
    value, grads = hypergradient(step, outer, w0, hparams, 4, method="evograd", K=3, sigma=0.1, tau=0.2, seed=11)

    with torch.no_grad():
        theta = w0
        for t in range(3):
            theta = step(theta, hparams, t)
    noise = torch.randn((3, 4, 3), generator=torch.Generator().manual_seed(11), dtype=DTYPE)
    copies = theta["W"] + 0.1 * noise
    omega = hparams["omega"].detach().requires_grad_()
    losses = torch.stack([loss({"W": c}, {"omega": omega}) for c in copies])
    dL = torch.stack([torch.autograd.grad(ell, omega, retain_graph=True)[0] for ell in losses])
    p = torch.softmax(-losses.detach() / 0.2, 0)
    evolved = torch.tensordot(p, copies, dims=1).requires_grad_()
    expected_value = outer({"W": evolved}, {})
    dE, = torch.autograd.grad(expected_value, evolved)
    dp = -(p[:, None] / 0.2) * (dL - p @ dL)
    expected = sum((dE * copies[k]).sum() * dp[k] for k in range(3))
    assert value.item() == pytest.approx(expected_value.item(), rel=1e-13)
    torch.testing.assert_close(grads["omega"], expected, rtol=1e-10, atol=1e-15)


def test_many_copies_point_along_one_gradient_step(classification_data):
    """With K = 4000 copies and σ = 1e-3, EvoGrad's w_T is one gradient step of rate σ²/τ from w_{T−1} in
    expectation, and its estimate has the direction of that step's exact hypergradient (reverse mode through it):
    cosine > 0.999 over the 20 example weights. With K = 2 it is much noisier (the paper's default trades accuracy
    for cost): its cosine is lower."""
    step, outer, w0, hparams, loss = weighted_problem(classification_data)
    one_step = gd(loss, lr=SIGMA ** 2 / TAU).step
    _, exact = hypergradient(one_step, outer, w0, hparams, 1, method="reverse")
    _, many = hypergradient(step, outer, w0, hparams, 1, method="evograd", K=4000, sigma=SIGMA, tau=TAU, seed=0)
    _, few = hypergradient(step, outer, w0, hparams, 1, method="evograd", K=2, sigma=SIGMA, tau=TAU, seed=0)
    assert cosine(many["omega"], exact["omega"]) > 0.999
    assert cosine(few["omega"], exact["omega"]) < cosine(many["omega"], exact["omega"])
    # Its scale is the step's too: σ²/τ is the rate, not an arbitrary factor.
    assert many["omega"].norm().item() == pytest.approx(exact["omega"].norm().item(), rel=0.1)


def test_seed_makes_it_deterministic(classification_data):
    """The same seed gives the same value and hypergradient bit for bit; another seed another estimate; without a
    seed the draw comes from torch's generator, so torch.manual_seed fixes it."""
    step, outer, w0, hparams, _ = weighted_problem(classification_data)

    def run(**options):
        return hypergradient(step, outer, w0, hparams, 3, method="evograd", **options)

    (v1, g1), (v2, g2), (_, g3) = run(seed=1), run(seed=1), run(seed=2)
    assert torch.equal(v1, v2) and torch.equal(g1["omega"], g2["omega"])
    assert not torch.equal(g1["omega"], g3["omega"])
    torch.manual_seed(5)
    _, a = run()
    torch.manual_seed(5)
    _, b = run()
    assert torch.equal(a["omega"], b["omega"])


def test_momentum_state_keeps_its_buffers(classification_data):
    """With momentum, only the parameters are perturbed and averaged: E sees the velocity of w_{T−1} unchanged."""
    step, _, w0, hparams, _ = weighted_problem(classification_data, opt=momentum, momentum=0.9)
    seen = {}

    def outer(w, h):
        seen.update(w)
        return w["W"].square().sum()

    hypergradient(step, outer, w0, hparams, 3, method="evograd", seed=0)
    with torch.no_grad():
        before_last = step(step(w0, hparams, 0), hparams, 1)
    assert torch.equal(seen["W@velocity"], before_last["W@velocity"])
    assert not torch.equal(seen["W"], before_last["W"])


def test_T_zero_is_E_of_w0_and_its_direct_term(classification_data):
    """T = 0: no step to replace; the value is E(w0) and an hparam E does not read gets an exact zero."""
    step, outer, w0, hparams, _ = weighted_problem(classification_data)
    value, grads = hypergradient(step, outer, w0, hparams, 0, method="evograd")
    assert value.item() == outer(w0, hparams).item()
    assert torch.equal(grads["omega"], torch.zeros(20, dtype=DTYPE))


def test_errors_name_the_problem(classification_data):
    """A plain function has no inner objective to sample; K, σ and τ must be positive."""
    step, outer, w0, hparams, _ = weighted_problem(classification_data)
    with pytest.raises(ValueError, match="inner objective"):
        hypergradient(lambda w, h, t: step(w, h, t), outer, w0, hparams, 2, method="evograd")
    for options in ({"K": 0}, {"sigma": 0.0}, {"tau": -1.0}):
        with pytest.raises(ValueError, match="K must be >= 1"):
            hypergradient(step, outer, w0, hparams, 2, method="evograd", **options)
