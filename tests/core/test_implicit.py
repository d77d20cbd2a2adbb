"""Tests of the implicit hypergradients at w_T (`method="fixed_point"`, `"neumann"`, `"cg"`).

Reference: the implicit function theorem on a strongly convex ridge-regression inner problem, in numpy.
Inner L(w, c) = ½‖Xw − y‖² + (c/2)‖w‖², gradient Aw − b with A = XᵀX + cI, b = Xᵀy; the fixed-point map is
one gd step Φ(w, c) = w − η(Aw − b), so ∂Φ/∂w = I − ηA and ∂Φ/∂c = −ηw. With g = ∂E/∂w at w, the solution
of (I − ∂Φ/∂w)ᵀv = g is v = A⁻¹g/η, hence dE/dc = ∂E/∂c − wᵀA⁻¹g, at any w; at w* = A⁻¹b it is the exact
bilevel hypergradient. The Neumann sum truncated at K, v_K = Σ_{k≤K} (I − ηA)^k g, is A⁻¹(I − (I − ηA)^{K+1})g/η.
Everything is float64.
"""

import numpy as np
import pytest
import torch

import problems
from bilevel_cli.core import gd, hypergradient, momentum
from problems import C, DTYPE, recording_times

T_CONVERGED = 200  # (1 − ηa_min)^200 ≈ 0.82^200 < 1e-17: w_T = w* to rounding


def spectrum(d, c: float = C):
    X = d["X"].numpy()
    return np.linalg.eigvalsh(X.T @ X) + c


def stable_lr(d) -> float:
    """η = 0.9/a_max: every eigenvalue 1 − ηa of ∂Φ/∂w lies in (0, 1)."""
    return 0.9 / spectrum(d).max()


def ridge_problem(d, opt=gd, direct: bool = False, lr_hparam: bool = False, **settings):
    """(step, E, w0, hparams): the shared ridge problem with η = `stable_lr`; c the weight decay and, with
    `lr_hparam`, η too (else a constant); E = ½‖X_v w − y_v‖², plus ½c² with `direct`."""
    return problems.ridge_problem(d, opt, lr=stable_lr(d), direct=direct, lr_hparam=lr_hparam, **settings)


def ift_dc(d, T: int | None = None, K: int | None = None) -> float:
    """−wᵀA⁻¹g at w = w_T (T gd steps from 0) or at w* (T None); with K, v truncated to the Neumann sum
    Σ_{k≤K} (I − ηA)^k g, i.e. −wᵀA⁻¹(I − (I − ηA)^{K+1})g."""
    X, y, Xv, yv = (d[k].numpy() for k in ("X", "y", "Xv", "yv"))
    A, b, eta = X.T @ X + C * np.eye(5), X.T @ y, stable_lr(d)
    w = np.linalg.solve(A, b) if T is None else np.zeros(5)
    for _ in range(T or 0):
        w = w - eta * (A @ w - b)
    g = Xv.T @ (Xv @ w - yv)
    if K is not None:
        g = g - np.linalg.matrix_power(np.eye(5) - eta * A, K + 1) @ g
    return -w @ np.linalg.solve(A, g)


def dc(d, method: str, T: int = T_CONVERGED, problem=None, **options) -> float:
    step, outer, w0, hparams = problem or ridge_problem(d)
    return hypergradient(step, outer, w0, hparams, T, method=method, **options)[1]["c"].item()


def relative_error(actual: float, expected: float) -> float:
    return abs(actual - expected) / abs(expected)


def test_oracle_converged_and_contracting(ridge_data):
    """Guards for the tests below: the contraction factor 1 − ηa_min of ∂Φ/∂w is below 1, w_T at
    T_CONVERGED gives the w* hypergradient to 1e-13, and at T = 30 it is visibly different (so that a test
    at T = 30 tells w_T from w*)."""
    rho = 1.0 - stable_lr(ridge_data) * spectrum(ridge_data).min()
    assert 0.0 < rho < 0.9
    exact = ift_dc(ridge_data)
    assert relative_error(ift_dc(ridge_data, T=T_CONVERGED), exact) < 1e-13
    assert relative_error(ift_dc(ridge_data, T=30), exact) > 1e-4


def test_cg_converges_in_dimension_iterations(ridge_data):
    """CG on the 5-dimensional problem: the error to the exact bilevel hypergradient decreases strictly
    over 0, 1, ..., 5 iterations, is still above 1e-4 after 4 and below 1e-10 after d = 5; the default
    options also reach 1e-10."""
    exact = ift_dc(ridge_data)
    errors = [relative_error(dc(ridge_data, "cg", iterations=k), exact) for k in range(6)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[4] > 1e-4 and errors[5] < 1e-10, errors
    assert relative_error(dc(ridge_data, "cg"), exact) < 1e-10


def test_cg_is_the_implicit_hypergradient_at_w_T(ridge_data):
    """At T = 30, far from w*, CG gives −w_TᵀA⁻¹g(w_T) (the IFT formula at the final iterate) to 1e-10,
    plus the direct term c of E = ridge + ½c²."""
    expected = ift_dc(ridge_data, T=30) + C
    assert dc(ridge_data, "cg", T=30, problem=ridge_problem(ridge_data, direct=True)) == pytest.approx(expected,
                                                                                                       rel=1e-10)


@pytest.mark.parametrize("K", [0, 1, 7, 40])
def test_neumann_is_the_truncated_series(ridge_data, K):
    """neumann with K iterations equals the closed-form truncated sum −wᵀA⁻¹(I − (I − ηA)^{K+1})g to
    1e-10: K counts the terms after the first, Σ_{k=0}^{K}."""
    assert dc(ridge_data, "neumann", iterations=K) == pytest.approx(ift_dc(ridge_data, T=T_CONVERGED, K=K), rel=1e-10)


def test_neumann_and_fixed_point_converge_as_iterations_grow(ridge_data):
    """For neumann and fixed_point with tol = 0 (the same sum) the error to the exact bilevel hypergradient
    is within the geometric bound ‖A⁻¹w*‖‖g‖ρ^{K+1} (ρ = 1 − ηa_min < 1 the contraction factor) at
    K = 0, 5, 20, 50, 150, decreases strictly over K = 0, 20, 50, 150, and is below 1e-8 at K = 150. (The
    error of a scalar need not fall at every K: the eigen-modes contribute with different signs, so their
    sum can cross zero; here it rises from K = 5 to K = 20.)"""
    X, y, Xv, yv = (ridge_data[k].numpy() for k in ("X", "y", "Xv", "yv"))
    A = X.T @ X + C * np.eye(5)
    w_star = np.linalg.solve(A, X.T @ y)
    scale = np.linalg.norm(np.linalg.solve(A, w_star)) * np.linalg.norm(Xv.T @ (Xv @ w_star - yv))
    rho = 1.0 - stable_lr(ridge_data) * spectrum(ridge_data).min()
    exact = ift_dc(ridge_data)
    for method, options in [("neumann", {}), ("fixed_point", {"tol": 0.0})]:
        errors = {K: abs(dc(ridge_data, method, iterations=K, **options) - exact) for K in (0, 5, 20, 50, 150)}
        assert all(e <= scale * rho ** (K + 1) + 1e-14 for K, e in errors.items()), (method, errors)
        assert errors[0] > errors[20] > errors[50] > errors[150], (method, errors)
        assert errors[150] < 1e-8 * abs(exact), (method, errors)


def test_fixed_point_stops_at_tol(ridge_data):
    """fixed_point with 10 000 iterations available: tol = 1e-12 reaches 1e-9 of the exact value, while
    tol = 1e-3 stops early, with an error between 1e-8 and 1e-1 (so the stopping test is what ends it)."""
    exact = ift_dc(ridge_data)
    assert relative_error(dc(ridge_data, "fixed_point", iterations=10_000, tol=1e-12), exact) < 1e-9
    assert 1e-8 < relative_error(dc(ridge_data, "fixed_point", iterations=10_000, tol=1e-3), exact) < 1e-1


def momentum_truncated_dc(d, mu: float, T: int, K: int):
    """Neumann sum for heavy-ball momentum in numpy, with the state (w, u) (u the velocity) after T steps
    from 0: Φ_u = μu + Aw − b, Φ_w = w − η(μu + Aw − b), so J = ∂Φ/∂(w, u) = [[I − ηA, −ημI], [A, μI]],
    ∂Φ/∂c = (−ηw, w), ∂E/∂(w, u) = (g, 0); returns (∂Φ/∂c)ᵀ Σ_{k≤K} (Jᵀ)^k (g, 0) and the spectral radius
    of J."""
    X, y, Xv, yv = (d[k].numpy() for k in ("X", "y", "Xv", "yv"))
    A, b, eta, I = X.T @ X + C * np.eye(5), X.T @ y, stable_lr(d), np.eye(5)
    w, u = np.zeros(5), np.zeros(5)
    for _ in range(T):
        u = mu * u + A @ w - b
        w = w - eta * u
    J = np.block([[I - eta * A, -eta * mu * I], [A, mu * I]])
    term = np.concatenate([Xv.T @ (Xv @ w - yv), np.zeros(5)])
    total = term.copy()
    for _ in range(K):
        term = J.T @ term
        total += term
    return np.concatenate([-eta * w, w]) @ total, np.abs(np.linalg.eigvals(J)).max()


@pytest.mark.parametrize("method", ["fixed_point", "neumann"])
def test_iterations_over_a_state_with_buffers(ridge_data, method):
    """Heavy-ball momentum (μ = 0.5): the state is (w, velocity) and Φ its step, whose Jacobian J is a
    contraction (spectral radius < 1) but not symmetric. With K = 3 and 10 iterations (tol = 0 for
    fixed_point) the result is the numpy Neumann sum over the whole state, Σ_{k≤K} (Jᵀ)^k, to 1e-10; with
    200 it is the bilevel hypergradient −w*ᵀA⁻¹g to 1e-8 (the fixed point and its dependence on c are
    those of gd)."""
    problem = ridge_problem(ridge_data, momentum, momentum=0.5)
    options = {"tol": 0.0} if method == "fixed_point" else {}
    for K in (3, 10):
        expected, radius = momentum_truncated_dc(ridge_data, 0.5, T_CONVERGED, K)
        assert radius < 1.0
        assert dc(ridge_data, method, problem=problem, iterations=K, **options) == pytest.approx(expected, rel=1e-10)
    assert relative_error(dc(ridge_data, method, problem=problem, iterations=200), ift_dc(ridge_data)) < 1e-8


@pytest.mark.parametrize("method", ["fixed_point", "neumann", "cg"])
def test_learning_rate_gets_zero_at_a_fixed_point(ridge_data, method):
    """∂Φ/∂η = −∇L(w) vanishes at a minimizer, so the implicit hypergradient of the learning rate is ~0
    (below 1e-8 in absolute value at w_T = w*), while the direct term c of E = ridge + ½c² is kept;
    reverse through 10 steps gives a learning-rate gradient far from 0 on the same problem."""
    step, outer, w0, hparams = ridge_problem(ridge_data, direct=True, lr_hparam=True)
    _, grads = hypergradient(step, outer, w0, hparams, T_CONVERGED, method=method, iterations=200)
    assert abs(grads["lr"].item()) < 1e-8
    assert grads["c"].item() == pytest.approx(ift_dc(ridge_data) + C, rel=1e-8)
    _, unrolled = hypergradient(step, outer, w0, hparams, 10, method="reverse")
    assert abs(unrolled["lr"].item()) > 1e-2


@pytest.mark.parametrize("method", ["fixed_point", "neumann", "cg"])
def test_implicit_calls_T_steps_then_the_map_at_T(ridge_data, method):
    """`step` runs for t = 0..T−1 (the inner problem) and once more at t = T (the fixed-point map Φ,
    differentiated); the value is E(w_T), detached, and grads has the keys and shapes of hparams, an
    unread hparam getting an exact zero."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)
    counting_step, seen = recording_times(step)
    value, grads = hypergradient(counting_step, outer, w0, hparams, 4, method=method, iterations=3)
    assert seen == [0, 1, 2, 3, 4]
    assert not value.requires_grad and list(grads) == list(hparams)
    assert torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
    with torch.no_grad():
        w = w0
        for t in range(4):
            w = step(w, hparams, t)
    assert value.item() == pytest.approx(outer(w, hparams).item(), rel=1e-14)


@pytest.mark.parametrize("method,options,match", [
    ("fixed_point", {"iterations": -1}, "iterations"),
    ("fixed_point", {"tol": -1e-3}, "tol"),
    ("neumann", {"iterations": -1}, "iterations"),
    ("cg", {"iterations": -5}, "iterations"),
    ("cg", {"tol": -1.0}, "tol"),
])
def test_invalid_options_raise_value_error(ridge_data, method, options, match):
    """A negative number of iterations or a negative tolerance is a ValueError naming the option."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    with pytest.raises(ValueError, match=match):
        hypergradient(step, outer, w0, hparams, 3, method=method, **options)


@pytest.mark.parametrize("method", ["fixed_point", "neumann", "cg"])
def test_unknown_option_raises_type_error(ridge_data, method):
    """An option the method does not have (here `segment`) is a TypeError, not silently ignored."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    with pytest.raises(TypeError):
        hypergradient(step, outer, w0, hparams, 3, method=method, segment=2)
