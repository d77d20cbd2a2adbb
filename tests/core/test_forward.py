"""Tests of forward-mode hypergradients (`method="forward"`), and of the agreement of the three exact
methods, forward == reverse == checkpointed, on problems with scalar, vector and matrix hyperparameters.

References: the closed form of T gradient-descent steps on ridge regression (spectral formula), and
`reverse` itself for the problems without a closed form. Memory is measured as the peak bytes of the
distinct storages held by autograd's saved tensors or by the states `step` returns. Everything is float64.
"""

import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.core import adam, forward_hypergradient, forward_step, gd, hypergradient, momentum, tangents
from problems import (C, DTYPE, assert_same, peak_bytes, recording_times, representation_problem, ridge_closed_form,
                      ridge_lr, ridge_problem)


# ---------------------------------------------------------------------------------------------------
# Softmax regression with a vector hyperparameter
# ---------------------------------------------------------------------------------------------------

def example_weights_problem(d):
    """λ = ω, 20 per-example weights of the training cross-entropy; gd with lr 0.5 on a linear classifier."""
    def loss(p, h):
        return (h["omega"] * F.cross_entropy(d["X"] @ p["W"], d["y"], reduction="none")).mean()

    def outer(w, h):
        return F.cross_entropy(d["Xv"] @ w["W"], d["yv"])

    opt = gd(loss, lr=0.5)
    omega = torch.linspace(0.5, 1.5, 20, dtype=DTYPE).requires_grad_()
    return opt.step, outer, opt.init({"W": torch.zeros(4, 3, dtype=DTYPE)}), {"omega": omega}


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 5, 20, 100])
def test_forward_matches_ridge_closed_form(ridge_data, T):
    """c (weight decay, also in E directly) and η (learning rate) in one call: forward-mode dE/dc, dE/dη
    and E match the spectral closed form to 1e-10 relative error at each T."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    value, grads = hypergradient(step, outer, w0, hparams, T, method="forward")
    E, dc, deta = ridge_closed_form(ridge_data, C, hparams["lr"].item(), T)
    assert value.item() == pytest.approx(E, rel=1e-12)
    assert grads["c"].item() == pytest.approx(dc, rel=1e-10)
    assert grads["lr"].item() == pytest.approx(deta, rel=1e-10)


PROBLEMS = {
    "ridge-gd": (lambda d: ridge_problem(d["ridge"]), 12),
    "ridge-momentum": (lambda d: ridge_problem(d["ridge"], momentum), 12),
    "ridge-adam": (lambda d: ridge_problem(d["ridge"], adam, lr=0.05), 12),
    "example-weights": (lambda d: example_weights_problem(d["classification"]), 8),
    "representation": (lambda d: representation_problem(d["classification"]), 8),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_forward_reverse_checkpointed_agree(ridge_data, classification_data, name):
    """forward == reverse == checkpointed (segment 3, which does not divide T) to 1e-10 relative error on
    every hyperparameter tensor, and the three return the same outer value: ridge with c and η under gd,
    momentum and Adam (their buffers are in the state), 20 per-example weights, and a representation
    network (two matrices, 54 scalars, also in E directly)."""
    build, T = PROBLEMS[name]
    step, outer, w0, hparams = build({"ridge": ridge_data, "classification": classification_data})
    value, expected = hypergradient(step, outer, w0, hparams, T, method="reverse")
    assert min(g.norm().item() for g in expected.values()) > 1e-4, "a vanishing reference proves nothing"
    for method, options in [("forward", {}), ("checkpointed", {"segment": 3})]:
        other_value, grads = hypergradient(step, outer, w0, hparams, T, method=method, **options)
        assert other_value.item() == pytest.approx(value.item(), rel=1e-13)
        assert_same(grads, expected, rtol=1e-10)


def test_forward_memory_does_not_grow_with_T():
    """Forward mode keeps one state, its tangent and one step's graph: its peak bytes at T = 200 are within
    1.5× of those at T = 10, while reverse's grow by more than 5× over the same range (so the measure
    does see a graph that grows)."""
    forward_10, forward_200 = peak_bytes("forward", 10), peak_bytes("forward", 200)
    reverse_10, reverse_200 = peak_bytes("reverse", 10), peak_bytes("reverse", 200)
    assert forward_200 <= 1.5 * forward_10, (forward_10, forward_200)
    assert reverse_200 > 5 * reverse_10, (reverse_10, reverse_200)


def test_forward_runs_one_pass_per_scalar_hyperparameter(ridge_data):
    """The cost model: with c, η and a 2×3 tensor (8 scalars), each of the T = 4 steps runs once per scalar
    (tangent direction), in order t = 0..3, so that the tangents of all scalars advance together."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)
    counting_step, seen = recording_times(step)
    hypergradient(counting_step, outer, w0, hparams, 4, method="forward")
    assert seen == [t for t in range(4) for _ in range(8)]


def test_forward_grads_keys_shapes_and_unused_is_zero(ridge_data):
    """`grads` has the keys of hparams in order, each with its hparam's shape and dtype; a 2×3 hparam that
    neither the steps nor E read gets an exact zero; the returned value carries no graph; the inputs are
    left unchanged and no .grad is accumulated."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)
    before = {k: v.clone() for k, v in {**w0, **hparams}.items()}
    value, grads = hypergradient(step, outer, w0, hparams, 3, method="forward")
    assert list(grads) == list(hparams)
    for k, v in hparams.items():
        assert grads[k].shape == v.shape and grads[k].dtype == v.dtype
    assert torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
    assert grads["lr"].item() != 0.0
    assert not value.requires_grad and value.grad_fn is None
    assert all(torch.equal(v, before[k]) for k, v in {**w0, **hparams}.items())
    assert all(v.grad is None for v in hparams.values())


def test_forward_T_zero_is_E_of_w0_and_direct_term(ridge_data):
    """T = 0: `step` is never called, the value is E(w0) and the gradient the direct term (c for the
    ½c² in E, 0 for η)."""
    _, outer, w0, hparams = ridge_problem(ridge_data)

    def step(w, h, t):
        raise AssertionError("step must not be called when T = 0")

    value, grads = hypergradient(step, outer, w0, hparams, 0, method="forward")
    assert value.item() == pytest.approx(0.5 * (ridge_data["yv"] @ ridge_data["yv"]).item() + 0.5 * C**2,
                                         rel=1e-14)
    assert grads["c"].item() == pytest.approx(C, rel=1e-14)
    assert grads["lr"].item() == 0.0


def test_forward_without_hyperparameters_returns_E(ridge_data):
    """With hparams = {} there is no tangent to carry: forward returns E(w_T) and empty grads."""
    step, outer, w0, _ = ridge_problem(ridge_data)
    fixed = {"c": torch.tensor(C, dtype=DTYPE), "lr": torch.tensor(ridge_lr(ridge_data, C), dtype=DTYPE)}
    value, grads = hypergradient(lambda w, h, t: step(w, fixed, t), lambda w, h: outer(w, fixed), w0, {}, 7,
                                 method="forward")
    assert grads == {}
    assert value.item() == pytest.approx(ridge_closed_form(ridge_data, C, fixed["lr"].item(), 7)[0], rel=1e-12)


def test_real_time_tangents_go_on_across_a_hyperparameter_change(ridge_data):
    """RTHO: λ changes between steps and the tangents go on. After 3 momentum steps at λ1 and 3 at λ2, the
    carried dE/dλ is the derivative of E(w_6) along a shift δ applied to λ at all six steps (λ1 + δ for the
    first three, λ2 + δ for the last), computed by reverse mode through one graph."""
    step, outer, w0, h1 = ridge_problem(ridge_data, momentum)
    h2 = {k: (v.detach() * 1.3).requires_grad_() for k, v in h1.items()}
    w, Z = w0, tangents(w0, h1)
    for t in range(6):
        w, Z = forward_step(step, w, Z, h1 if t < 3 else h2, t)
    value, grads = forward_hypergradient(outer, w, Z, h2)

    delta = {k: torch.zeros_like(v, requires_grad=True) for k, v in h1.items()}
    shifted = [{k: h[k].detach() + delta[k] for k in h} for h in (h1, h2)]
    w = w0
    for t in range(6):
        w = step(w, shifted[t >= 3], t)
    expected = outer(w, shifted[1])
    reference = dict(zip(delta, torch.autograd.grad(expected, list(delta.values()))))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    assert_same(grads, reference, rtol=1e-10)
