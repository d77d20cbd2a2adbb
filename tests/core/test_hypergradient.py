"""Tests of `bilevel_cli.core.hypergradient` against independent references.

Three kinds of reference, none of which differentiates through the unrolled loop with autograd:

1. closed forms of T steps of gradient descent on a ridge-regression inner problem (eigendecomposition
   of A = XᵀX + cI), for the exact, the truncated and the implicit-function-theorem hypergradients;
2. central finite differences of λ ↦ E(w_T(λ), λ), where w_T is computed by a plain loop with
   analytic inner gradients (softmax regression), for scalar, vector and matrix hyperparameters;
3. the documented API contract (errors, keys, shapes, detached value, T = 0).

Everything is float64.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bilevel_cli
from bilevel_cli.core import METHODS, adam, gd, hypergradient, momentum
from problems import recording_times

DTYPE = torch.float64
OPTIMIZERS = {"gd": gd, "momentum": momentum, "adam": adam}


def scalar(x: float, requires_grad: bool = True) -> torch.Tensor:
    return torch.tensor(x, dtype=DTYPE, requires_grad=requires_grad)


def assert_close(actual, expected, rtol: float, atol: float = 0.0) -> None:
    """|actual − expected| ≤ rtol·|expected| + atol elementwise, with a readable message."""
    actual = np.asarray(torch.as_tensor(actual).detach().numpy(), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    err = np.abs(actual - expected)
    bound = rtol * np.abs(expected) + atol
    assert np.all(err <= bound), f"actual {actual} vs expected {expected}: max error {err.max():.3e}"


# ---------------------------------------------------------------------------------------------------
# 1. Ridge regression: closed forms
#
# Inner  L(w, c) = ½‖Xw − y‖² + (c/2)‖w‖²,  gradient A w − b with A = XᵀX + cI, b = Xᵀy.
# Outer  E(w)    = ½‖X_v w − y_v‖².
# GD from w0 = 0: w_T = Σ_{s<T} (I − ηA)^s η b = Q diag(f(a_i)) Qᵀ b,  f(a) = (1 − (1 − ηa)^T)/a,
# where A = Q diag(a) Qᵀ and a_i = s_i + c (s_i the eigenvalues of XᵀX; Q does not depend on c).
# ---------------------------------------------------------------------------------------------------

def ridge_spectrum(data):
    X, y = data["X"].numpy(), data["y"].numpy()
    s, Q = np.linalg.eigh(X.T @ X)
    return s, Q, Q.T @ (X.T @ y)


def ridge_outer(data, w: np.ndarray):
    """E(w) and its gradient g = X_vᵀ(X_v w − y_v), in numpy."""
    Xv, yv = data["Xv"].numpy(), data["yv"].numpy()
    r = Xv @ w - yv
    return 0.5 * r @ r, Xv.T @ r


def ridge_closed_form(data, c: float, eta: float, T: int):
    """(E(w_T), w_T, dE/dc, dE/dη) of T GD steps from w0 = 0, from the spectral formula above.

    df/da = (Tη(1 − ηa)^{T−1}·a − (1 − (1 − ηa)^T))/a²,  df/dη = T(1 − ηa)^{T−1}."""
    s, Q, z = ridge_spectrum(data)
    a = s + c
    r = 1.0 - eta * a
    f = (1.0 - r**T) / a
    df_da = (T * eta * r ** (T - 1) * a - (1.0 - r**T)) / a**2
    df_deta = T * r ** (T - 1)
    w = Q @ (f * z)
    E, g = ridge_outer(data, w)
    return E, w, g @ Q @ (df_da * z), g @ Q @ (df_deta * z)


def ridge_truncated_dc(data, c: float, eta: float, T: int, K: int) -> float:
    """K-step truncated dE/dc: Σ_{t=T−K}^{T−1} gᵀ (I − ηA)^{T−1−t} ∂Φ/∂c(w_t), with ∂Φ/∂c = −η w_t."""
    s, Q, z = ridge_spectrum(data)
    a = s + c
    r = 1.0 - eta * a

    def w_at(t):
        return Q @ ((1.0 - r**t) / a * z)

    _, g = ridge_outer(data, w_at(T))
    total = 0.0
    for t in range(T - K, T):
        total += g @ Q @ (r ** (T - 1 - t) * (Q.T @ (-eta * w_at(t))))
    return total


def ridge_ift_dc(data, c: float) -> float:
    """Exact bilevel hypergradient by the implicit function theorem: w* = A⁻¹b, dw*/dc = −A⁻¹w*."""
    X, y = data["X"].numpy(), data["y"].numpy()
    A = X.T @ X + c * np.eye(X.shape[1])
    w_star = np.linalg.solve(A, X.T @ y)
    _, g = ridge_outer(data, w_star)
    return g @ np.linalg.solve(A, -w_star)


def ridge_stable_lr(data, c: float) -> float:
    """η = 0.9/a_max < 1/a_max, so that every factor 1 − ηa_i lies in (0, 1)."""
    s, _, _ = ridge_spectrum(data)
    return 0.9 / (s.max() + c)


def ridge_loss(data, c_in_loss: bool):
    """½‖Xw − y‖², plus (c/2)‖w‖² with c = hparams["c"] when `c_in_loss`."""
    def loss(p, h):
        r = data["X"] @ p["w"] - data["y"]
        value = 0.5 * r @ r
        if c_in_loss:
            value = value + 0.5 * h["c"] * (p["w"] @ p["w"])
        return value
    return loss


def ridge_E(data):
    def outer(w, h):
        r = data["Xv"] @ w["w"] - data["yv"]
        return 0.5 * r @ r
    return outer


def ridge_E_with_direct_term(data):
    """E(w, c) = ½‖X_v w − y_v‖² + ½c²: its direct derivative ∂E/∂c is c."""
    base = ridge_E(data)
    return lambda w, h: base(w, h) + 0.5 * h["c"] ** 2


def ridge_w0():
    return {"w": torch.zeros(5, dtype=DTYPE)}


C = 0.3
T_VALUES = [1, 2, 5, 20, 100]


def test_closed_form_oracle_is_right(ridge_data):
    """Checks the test's own oracle: the spectral w_T equals a plain GD loop, its dE/dc and dE/dη equal
    central differences of the closed-form E, and the truncated sum with K = T equals dE/dc."""
    X, y = ridge_data["X"].numpy(), ridge_data["y"].numpy()
    eta, T = ridge_stable_lr(ridge_data, C), 7
    A, b = X.T @ X + C * np.eye(5), X.T @ y
    w = np.zeros(5)
    for _ in range(T):
        w = w - eta * (A @ w - b)
    E, w_T, dc, deta = ridge_closed_form(ridge_data, C, eta, T)
    np.testing.assert_allclose(w_T, w, rtol=1e-12)
    h = 1e-6
    fd_c = (ridge_closed_form(ridge_data, C + h, eta, T)[0] - ridge_closed_form(ridge_data, C - h, eta, T)[0]) / (2 * h)
    fd_eta = (ridge_closed_form(ridge_data, C, eta + h, T)[0] - ridge_closed_form(ridge_data, C, eta - h, T)[0]) / (2 * h)
    assert_close(dc, fd_c, rtol=1e-6)
    assert_close(deta, fd_eta, rtol=1e-6)
    assert_close(ridge_truncated_dc(ridge_data, C, eta, T, K=T), dc, rtol=1e-10)


@pytest.mark.parametrize("T", T_VALUES)
def test_reverse_dc_closed_form_weight_decay(ridge_data, T):
    """λ = c as the optimizer's weight decay (weight_decay="c"): reverse-mode dE/dc and the outer value
    match the closed form to 1e-8 relative error at each T."""
    eta = ridge_stable_lr(ridge_data, C)
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr=eta, weight_decay="c")
    value, grads = hypergradient(opt.step, ridge_E(ridge_data), opt.init(ridge_w0()), {"c": scalar(C)}, T)
    E, _, dc, _ = ridge_closed_form(ridge_data, C, eta, T)
    assert_close(value, E, rtol=1e-10)
    assert_close(grads["c"], dc, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("T", T_VALUES)
def test_reverse_dc_closed_form_inside_loss(ridge_data, T):
    """λ = c inside the inner loss ((c/2)‖w‖² reads hparams["c"]): same closed form as weight decay."""
    eta = ridge_stable_lr(ridge_data, C)
    opt = gd(ridge_loss(ridge_data, c_in_loss=True), lr=eta)
    _, grads = hypergradient(opt.step, ridge_E(ridge_data), opt.init(ridge_w0()), {"c": scalar(C)}, T)
    _, _, dc, _ = ridge_closed_form(ridge_data, C, eta, T)
    assert_close(grads["c"], dc, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("T", T_VALUES)
def test_reverse_dlr_closed_form(ridge_data, T):
    """λ = η (lr="lr"), c a fixed weight decay: reverse-mode dE/dη matches T(1 − ηa)^{T−1} in the
    spectral formula to 1e-8 relative error. η is a third of the stable step used elsewhere: dE/dη → 0
    as w_T converges (w* does not depend on η), and at T = 100 with the larger step it is ~1e-7, a
    cancellation-dominated value for which a relative tolerance is meaningless."""
    eta = ridge_stable_lr(ridge_data, C) / 3
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr="lr", weight_decay=C)
    _, grads = hypergradient(opt.step, ridge_E(ridge_data), opt.init(ridge_w0()), {"lr": scalar(eta)}, T)
    _, _, _, deta = ridge_closed_form(ridge_data, C, eta, T)
    assert_close(grads["lr"], deta, rtol=1e-8)


@pytest.mark.parametrize("T", [2, 20])
def test_reverse_two_hparams_at_once(ridge_data, T):
    """c and η both outer variables in one call: each gradient equals its own closed form (no mixing)."""
    eta = ridge_stable_lr(ridge_data, C)
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr="lr", weight_decay="c")
    hparams = {"c": scalar(C), "lr": scalar(eta)}
    _, grads = hypergradient(opt.step, ridge_E(ridge_data), opt.init(ridge_w0()), hparams, T)
    _, _, dc, deta = ridge_closed_form(ridge_data, C, eta, T)
    assert_close(grads["c"], dc, rtol=1e-8)
    assert_close(grads["lr"], deta, rtol=1e-8)


@pytest.mark.parametrize("T,K", [(5, 0), (5, 1), (5, 3), (5, 5), (20, 7), (100, 10), (100, 100)])
def test_truncated_dc_closed_form(ridge_data, T, K):
    """Truncated back-propagation through the last K steps equals the closed-form truncated sum
    Σ_{t=T−K}^{T−1} gᵀ(I − ηA)^{T−1−t}(−η w_t), plus the direct term c of E = ridge + ½c²
    (the direct term is counted for every K, including K = 0)."""
    eta = ridge_stable_lr(ridge_data, C)
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr=eta, weight_decay="c")
    value, grads = hypergradient(opt.step, ridge_E_with_direct_term(ridge_data), opt.init(ridge_w0()),
                                 {"c": scalar(C)}, T, method="truncated", K=K)
    expected = ridge_truncated_dc(ridge_data, C, eta, T, K) + C
    assert_close(grads["c"], expected, rtol=1e-8)
    E, _, _, _ = ridge_closed_form(ridge_data, C, eta, T)
    assert_close(value, E + 0.5 * C**2, rtol=1e-10)


def test_truncated_partial_differs_from_reverse(ridge_data):
    """Guard for the test above: with 0 < K < T the truncated value really differs from the exact one,
    so that a `truncated` that ignored K would be caught."""
    eta, T = ridge_stable_lr(ridge_data, C), 20
    exact = ridge_closed_form(ridge_data, C, eta, T)[2]
    truncated = ridge_truncated_dc(ridge_data, C, eta, T, K=3)
    assert abs(exact - truncated) > 1e-3 * abs(exact)


@pytest.mark.parametrize("opt_name", ["gd", "momentum", "adam"])
def test_truncated_extremes_equal_reverse_and_first_order(ridge_data, opt_name):
    """K = T is reverse and K = 0 is first_order, to 1e-12, for every optimizer (buffers included),
    with two hparams (c in the loss and in E directly; η the learning rate)."""
    T = 6
    lr = ridge_stable_lr(ridge_data, C) if opt_name != "adam" else 0.05
    opt = OPTIMIZERS[opt_name](ridge_loss(ridge_data, c_in_loss=True), lr="lr")
    w0, E = opt.init(ridge_w0()), ridge_E_with_direct_term(ridge_data)

    def run(method, **options):
        return hypergradient(opt.step, E, w0, {"c": scalar(C), "lr": scalar(lr)}, T, method=method, **options)

    for (v_a, g_a), (v_b, g_b) in [(run("truncated", K=T), run("reverse")),
                                   (run("truncated", K=0), run("first_order"))]:
        torch.testing.assert_close(v_a, v_b, rtol=1e-12, atol=0.0)
        for k in ("c", "lr"):
            torch.testing.assert_close(g_a[k], g_b[k], rtol=1e-12, atol=0.0)


def test_first_order_returns_direct_term(ridge_data):
    """first_order drops dw_T/dλ: with E = ridge + ½c² the gradient is exactly c, and the learning rate
    (which E does not touch directly) gets exactly 0, although its exact hypergradient is nonzero."""
    T, eta = 10, ridge_stable_lr(ridge_data, C)
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr="lr", weight_decay="c")
    w0, E = opt.init(ridge_w0()), ridge_E_with_direct_term(ridge_data)
    _, fo = hypergradient(opt.step, E, w0, {"c": scalar(C), "lr": scalar(eta)}, T, method="first_order")
    _, exact = hypergradient(opt.step, E, w0, {"c": scalar(C), "lr": scalar(eta)}, T, method="reverse")
    assert fo["c"].item() == pytest.approx(C, rel=1e-15)
    assert fo["lr"].item() == 0.0
    assert abs(exact["lr"].item()) > 1e-3 and abs(exact["c"].item() - C) > 1e-3


def test_first_order_without_direct_term_is_zero(ridge_data):
    """With the plain ridge E (no direct dependence on c) the first-order hypergradient is 0."""
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr=0.01, weight_decay="c")
    _, grads = hypergradient(opt.step, ridge_E(ridge_data), opt.init(ridge_w0()), {"c": scalar(C)}, 5,
                             method="first_order")
    assert torch.equal(grads["c"], torch.zeros((), dtype=DTYPE))


def test_reverse_converges_to_implicit_hypergradient(ridge_data):
    """The T-step hypergradient approaches the exact bilevel one (implicit function theorem,
    dE/dc = gᵀ(−A⁻¹w*)) as T grows (Franceschi et al. 2018): with η < 1/a_max the error decreases
    monotonically over T = 10, 100, 1000, and at T = 1000 it is below 1e-6 relative."""
    eta = ridge_stable_lr(ridge_data, C)
    ift = ridge_ift_dc(ridge_data, C)
    opt = gd(ridge_loss(ridge_data, c_in_loss=False), lr=eta, weight_decay="c")
    errors = []
    for T in (10, 100, 1000):
        _, grads = hypergradient(opt.step, ridge_E(ridge_data), opt.init(ridge_w0()), {"c": scalar(C)}, T)
        errors.append(abs(grads["c"].item() - ift) / abs(ift))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 1e-3, "T = 10 should still be visibly off, else the test proves nothing"
    assert errors[2] < 1e-6, errors


# ---------------------------------------------------------------------------------------------------
# 2. Finite differences on softmax-regression inner problems
#
# The reference is a plain loop (no autograd, under no_grad) with the analytic gradient of the
# weighted mean cross-entropy, ∇_W = Fᵀ(ω ⊙ (softmax(FW) − Y))/n, and the optimizers' documented
# update rules. Central differences with h = 1e-6 are compared at rtol 1e-6.
# ---------------------------------------------------------------------------------------------------

H = 1e-6
FD_RTOL = 1e-6
N_CLASSES = 3


def cross_entropy(features, W, labels, weights=None):
    """Mean of ω_i·CE_i (ω = 1 if not given): the same expression is used by the core's loss and
    by the reference, whose gradient comes from `cross_entropy_grad`."""
    per_example = F.cross_entropy(features @ W, labels, reduction="none")
    if weights is not None:
        per_example = weights * per_example
    return per_example.mean()


def cross_entropy_grad(features, W, labels, weights=None):
    """Analytic ∇_W of `cross_entropy`: Fᵀ(ω ⊙ (P − Y))/n."""
    P = torch.softmax(features @ W, dim=1)
    residual = P - F.one_hot(labels, N_CLASSES).to(DTYPE)
    if weights is not None:
        residual = weights[:, None] * residual
    return features.T @ residual / features.shape[0]


def reference_unroll(grad_fn, W0, T, optimizer, lr, momentum=0.0, weight_decay=0.0,
                     betas=(0.9, 0.999), eps=1e-8, eps_root=1e-16):
    """T plain steps of gd / heavy-ball momentum (v ← μv + g, W ← W − lr·v) / Adam with bias correction
    and eps_root inside the square root; g = ∇L + weight_decay·W."""
    with torch.no_grad():
        W, v = W0.clone(), torch.zeros_like(W0)
        m, s = torch.zeros_like(W0), torch.zeros_like(W0)
        b1, b2 = betas
        for t in range(T):
            g = grad_fn(W) + weight_decay * W
            if optimizer == "gd":
                W = W - lr * g
            elif optimizer == "momentum":
                v = momentum * v + g
                W = W - lr * v
            elif optimizer == "adam":
                m = b1 * m + (1 - b1) * g
                s = b2 * s + (1 - b2) * g * g
                m_hat, s_hat = m / (1 - b1 ** (t + 1)), s / (1 - b2 ** (t + 1))
                W = W - lr * m_hat / ((s_hat + eps_root).sqrt() + eps)
            else:
                raise ValueError(optimizer)
        return W


def central_difference(fn, x: float) -> float:
    return (fn(x + H) - fn(x - H)) / (2 * H)


def zero_classifier(n_features: int = 4):
    return {"W": torch.zeros(n_features, N_CLASSES, dtype=DTYPE)}


# (optimizer, the hyperparameter that is λ, its value, the optimizer's other settings)
SCALAR_CASES = [
    ("gd", "lr", 0.5, {}),
    ("momentum", "lr", 0.3, {"momentum": 0.8}),
    ("momentum", "momentum", 0.8, {"lr": 0.3}),
    ("adam", "lr", 0.05, {}),
    ("gd", "weight_decay", 0.1, {"lr": 0.5}),
    ("momentum", "weight_decay", 0.1, {"lr": 0.3, "momentum": 0.8}),
    ("adam", "weight_decay", 0.1, {"lr": 0.05}),
]


@pytest.mark.parametrize("opt_name,hparam,value,fixed", SCALAR_CASES,
                         ids=[f"{o}-{h}" for o, h, _, _ in SCALAR_CASES])
def test_scalar_hyperparameter_matches_finite_differences(classification_data, opt_name, hparam, value, fixed):
    """λ = one scalar optimizer hyperparameter (lr, momentum coefficient, L2 coefficient): the reverse
    hypergradient equals the central difference of E(w_T(λ)) over a plain unrolled loop, and the
    returned outer value equals that loop's E."""
    d, T = classification_data, 8
    opt = OPTIMIZERS[opt_name](lambda p, h: cross_entropy(d["X"], p["W"], d["y"]), **fixed, **{hparam: "lam"})

    def outer(w, h):
        return cross_entropy(d["Xv"], w["W"], d["yv"])

    value_out, grads = hypergradient(opt.step, outer, opt.init(zero_classifier()), {"lam": scalar(value)}, T)

    def E_of(lam):
        W_T = reference_unroll(lambda W: cross_entropy_grad(d["X"], W, d["y"]), zero_classifier()["W"], T,
                               opt_name, **fixed, **{hparam: lam})
        return cross_entropy(d["Xv"], W_T, d["yv"]).item()

    fd = central_difference(E_of, value)
    assert abs(fd) > 1e-4, "a vanishing derivative would make the comparison vacuous"
    assert_close(grads["lam"], fd, rtol=FD_RTOL)
    assert_close(value_out, E_of(value), rtol=1e-12)


def test_example_weights_match_finite_differences(classification_data):
    """λ = 20 per-example weights ω of a weighted softmax-regression inner loss (gd, T = 8): every
    coordinate of the hypergradient vector equals the central difference along that coordinate."""
    d, T, lr = classification_data, 8, 0.5
    omega = torch.linspace(0.5, 1.5, 20, dtype=DTYPE)
    opt = gd(lambda p, h: cross_entropy(d["X"], p["W"], d["y"], h["omega"]), lr=lr)

    def outer(w, h):
        return cross_entropy(d["Xv"], w["W"], d["yv"])

    _, grads = hypergradient(opt.step, outer, opt.init(zero_classifier()),
                             {"omega": omega.clone().requires_grad_()}, T)

    def E_of(om):
        W_T = reference_unroll(lambda W: cross_entropy_grad(d["X"], W, d["y"], om), zero_classifier()["W"], T,
                               "gd", lr=lr)
        return cross_entropy(d["Xv"], W_T, d["yv"]).item()

    fd = torch.empty(20, dtype=DTYPE)
    for i in range(20):
        e_i = torch.zeros(20, dtype=DTYPE)
        e_i[i] = H
        fd[i] = (E_of(omega + e_i) - E_of(omega - e_i)) / (2 * H)
    assert grads["omega"].shape == (20,)
    assert fd.abs().max() > 1e-3
    assert_close(grads["omega"], fd, rtol=FD_RTOL, atol=1e-9)


def test_representation_network_matches_finite_differences(classification_data):
    """λ = (A1, A2), the weights of a representation h_λ(x) = tanh(x A1) A2; the inner problem is a
    zero-initialized linear classifier on h_λ(x) trained by 8 gd steps on cross-entropy; the outer loss
    is cross-entropy of h_λ(x_val) through w_T, so it also depends on λ directly. Directional
    derivatives along random directions (A1 only, A2 only, both) match central differences."""
    d, T, lr = classification_data, 8, 0.5
    gen = torch.Generator().manual_seed(2)
    A1 = 0.5 * torch.randn(4, 6, generator=gen, dtype=DTYPE)
    A2 = 0.5 * torch.randn(6, 5, generator=gen, dtype=DTYPE)

    def features(x, h):
        return torch.tanh(x @ h["A1"]) @ h["A2"]

    opt = gd(lambda p, h: cross_entropy(features(d["X"], h), p["W"], d["y"]), lr=lr)

    def outer(w, h):
        return cross_entropy(features(d["Xv"], h), w["W"], d["yv"])

    hparams = {"A1": A1.clone().requires_grad_(), "A2": A2.clone().requires_grad_()}
    _, grads = hypergradient(opt.step, outer, opt.init(zero_classifier(5)), hparams, T)
    assert grads["A1"].shape == (4, 6) and grads["A2"].shape == (6, 5)

    def E_of(a1, a2):
        h = {"A1": a1, "A2": a2}
        W_T = reference_unroll(lambda W: cross_entropy_grad(features(d["X"], h), W, d["y"]),
                               zero_classifier(5)["W"], T, "gd", lr=lr)
        return cross_entropy(features(d["Xv"], h), W_T, d["yv"]).item()

    D1 = torch.randn(4, 6, generator=gen, dtype=DTYPE)
    D2 = torch.randn(6, 5, generator=gen, dtype=DTYPE)
    for dir1, dir2 in [(D1, torch.zeros_like(D2)), (torch.zeros_like(D1), D2), (D1, D2)]:
        fd = central_difference(lambda s: E_of(A1 + s * dir1, A2 + s * dir2), 0.0)
        analytic = (grads["A1"] * dir1).sum() + (grads["A2"] * dir2).sum()
        assert abs(fd) > 1e-4
        assert_close(analytic, fd, rtol=FD_RTOL)


# ---------------------------------------------------------------------------------------------------
# 3. API behaviour
# ---------------------------------------------------------------------------------------------------

def classification_setup(d):
    """gd on softmax regression with lr and an L2 coefficient c as hparams; E has a direct ½c² term."""
    opt = gd(lambda p, h: cross_entropy(d["X"], p["W"], d["y"]), lr="lr", weight_decay="c")

    def outer(w, h):
        return cross_entropy(d["Xv"], w["W"], d["yv"]) + 0.5 * h["c"] ** 2

    return opt, outer, opt.init(zero_classifier())


def test_package_level_import_is_the_core_function():
    """`from bilevel_cli import hypergradient` is the core function, and METHODS holds the spine's three methods."""
    from bilevel_cli import hypergradient as top_level
    assert top_level is hypergradient
    assert bilevel_cli.hypergradient is hypergradient
    assert {"reverse", "truncated", "first_order"} <= set(METHODS)


def test_unknown_method_raises_with_valid_names(classification_data):
    """An unknown method is a ValueError whose message lists every valid method name."""
    opt, outer, w0 = classification_setup(classification_data)
    with pytest.raises(ValueError) as info:
        hypergradient(opt.step, outer, w0, {"lr": scalar(0.5), "c": scalar(0.1)}, 3, method="backward")
    for name in METHODS:
        assert name in str(info.value)


def test_hparam_without_requires_grad_raises(classification_data):
    """An hparam tensor that does not require grad is rejected with a ValueError naming it."""
    opt, outer, w0 = classification_setup(classification_data)
    with pytest.raises(ValueError, match="'c'"):
        hypergradient(opt.step, outer, w0, {"lr": scalar(0.5), "c": scalar(0.1, requires_grad=False)}, 3)


@pytest.mark.parametrize("K", [-1, 4])
def test_truncated_K_out_of_range_raises(classification_data, K):
    """truncated needs 0 ≤ K ≤ T; K = −1 and K = T + 1 are ValueErrors."""
    opt, outer, w0 = classification_setup(classification_data)
    with pytest.raises(ValueError, match="K"):
        hypergradient(opt.step, outer, w0, {"lr": scalar(0.5), "c": scalar(0.1)}, 3, method="truncated", K=K)


def test_negative_T_raises(classification_data):
    """T < 0 is a ValueError."""
    opt, outer, w0 = classification_setup(classification_data)
    with pytest.raises(ValueError, match="T"):
        hypergradient(opt.step, outer, w0, {"lr": scalar(0.5), "c": scalar(0.1)}, -1)


@pytest.mark.parametrize("method,options", [("reverse", {}), ("truncated", {"K": 2}), ("first_order", {})])
def test_grads_have_hparams_keys_shapes_and_unused_is_zero(classification_data, method, options):
    """`grads` has exactly the keys of hparams, each with its hparam's shape and dtype; an hparam that
    neither the steps nor E use (a 2×3 tensor) gets an exact zero gradient; lr (used) gets a nonzero one
    except for first_order."""
    opt, outer, w0 = classification_setup(classification_data)
    hparams = {"lr": scalar(0.5), "c": scalar(0.1),
               "unused": torch.ones(2, 3, dtype=DTYPE, requires_grad=True)}
    _, grads = hypergradient(opt.step, outer, w0, hparams, 4, method=method, **options)
    assert list(grads) == list(hparams)
    for k, v in hparams.items():
        assert grads[k].shape == v.shape and grads[k].dtype == v.dtype
    assert torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
    assert (grads["lr"].item() == 0.0) == (method == "first_order")


@pytest.mark.parametrize("method,options", [("reverse", {}), ("truncated", {"K": 2}), ("first_order", {})])
def test_outer_value_is_detached_and_equals_plain_unroll(classification_data, method, options):
    """The returned outer value carries no graph and equals E(w_T, λ) of a plain unrolled loop, whatever
    the method (they differ only in what they differentiate)."""
    d, T, lr, c = classification_data, 5, 0.5, 0.1
    opt, outer, w0 = classification_setup(d)
    value, _ = hypergradient(opt.step, outer, w0, {"lr": scalar(lr), "c": scalar(c)}, T, method=method, **options)
    assert not value.requires_grad and value.grad_fn is None
    W_T = reference_unroll(lambda W: cross_entropy_grad(d["X"], W, d["y"]), w0["W"], T, "gd",
                           lr=lr, weight_decay=c)
    expected = cross_entropy(d["Xv"], W_T, d["yv"]) + 0.5 * c**2
    assert_close(value, expected.item(), rtol=1e-12)


def test_inputs_are_not_modified(classification_data):
    """hypergradient is pure: w0 is unchanged and no .grad is accumulated on the hparams (it returns the
    gradients instead of calling backward)."""
    opt, outer, w0 = classification_setup(classification_data)
    w0["W"] += 0.1
    before = w0["W"].clone()
    hparams = {"lr": scalar(0.5), "c": scalar(0.1)}
    hypergradient(opt.step, outer, w0, hparams, 4)
    assert torch.equal(w0["W"], before)
    assert all(v.grad is None for v in hparams.values())


@pytest.mark.parametrize("method", ["reverse", "first_order"])
def test_T_zero_returns_E_of_w0_and_direct_gradient(classification_data, method):
    """T = 0 never calls `step`, returns E(w0, λ), and the gradient is the direct term only:
    ∂(½c²)/∂c = c, and 0 for the learning rate."""
    d, c = classification_data, 0.1
    _, outer, w0 = classification_setup(d)

    def step(w, h, t):
        raise AssertionError("step must not be called when T = 0")

    value, grads = hypergradient(step, outer, w0, {"lr": scalar(0.5), "c": scalar(c)}, 0, method=method)
    expected = cross_entropy(d["Xv"], w0["W"], d["yv"]) + 0.5 * c**2
    assert_close(value, expected.item(), rtol=1e-14)
    assert grads["c"].item() == pytest.approx(c, rel=1e-15)
    assert grads["lr"].item() == 0.0


def test_T_zero_without_direct_term_is_zero(classification_data):
    """T = 0 with an E that does not depend on λ directly: the hypergradient is 0 (not an error)."""
    d = classification_data
    opt = gd(lambda p, h: cross_entropy(d["X"], p["W"], d["y"]), lr="lr")
    _, grads = hypergradient(opt.step, lambda w, h: cross_entropy(d["Xv"], w["W"], d["yv"]),
                             opt.init(zero_classifier()), {"lr": scalar(0.5)}, 0)
    assert torch.equal(grads["lr"], torch.zeros((), dtype=DTYPE))


@pytest.mark.parametrize("method,options", [("reverse", {}), ("truncated", {"K": 2}), ("first_order", {})])
def test_steps_are_called_with_t_in_order(classification_data, method, options):
    """Every method runs `step` exactly for t = 0, 1, ..., T−1 in order (Adam's bias correction reads t),
    whichever of those steps it differentiates through."""
    opt, outer, w0 = classification_setup(classification_data)
    step, seen = recording_times(opt.step)
    hypergradient(step, outer, w0, {"lr": scalar(0.5), "c": scalar(0.1)}, 5, method=method, **options)
    assert seen == [0, 1, 2, 3, 4]


def test_unroll_runs_steps_from_start_to_T():
    """`unroll(step, w, hparams, T, start)` applies the steps start, ..., T−1 in order (here each step
    appends its t to a list, so the result is the exact sequence)."""
    from bilevel_cli.core import unroll

    def step(w, h, t):
        return {"w": torch.cat([w["w"], torch.tensor([float(t)], dtype=DTYPE)])}

    empty = {"w": torch.zeros(0, dtype=DTYPE)}
    assert unroll(step, empty, {}, 4)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert unroll(step, empty, {}, 5, start=2)["w"].tolist() == [2.0, 3.0, 4.0]
    assert unroll(step, empty, {}, 3, start=3)["w"].tolist() == []
