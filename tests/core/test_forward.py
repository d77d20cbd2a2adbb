"""Tests of forward-mode hypergradients (`method="forward"`), and of the agreement of the three exact
methods, forward == reverse == checkpointed, on problems with scalar, vector and matrix hyperparameters.

References: the closed form of T gradient-descent steps on ridge regression (spectral formula), and
`reverse` itself for the problems without a closed form. Memory is measured as the peak bytes of the
distinct storages held by autograd's saved tensors or by the states `step` returns. Everything is float64.
"""

import weakref

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from bilevel_cli.core import adam, gd, hypergradient, momentum

DTYPE = torch.float64
C = 0.3


@pytest.fixture(autouse=True)
def one_thread():
    """The problems here are tiny, so one intra-op thread is as fast as several, and it does not stall
    when other processes hold the cores (a thread pool then waits for a busy core at every product)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=DTYPE, requires_grad=True)


def assert_same(actual: dict, expected: dict, rtol: float) -> None:
    """Same keys, and ‖actual[k] − expected[k]‖ ≤ rtol·‖expected[k]‖ for every key."""
    assert list(actual) == list(expected)
    for k, e in expected.items():
        err, scale = (actual[k] - e).norm().item(), e.norm().item()
        assert err <= rtol * scale, f"{k}: error {err:.3e} against norm {scale:.3e}"


# ---------------------------------------------------------------------------------------------------
# Ridge regression. Inner L(w) = ½‖Xw − y‖² + (c/2)‖w‖² (gradient Aw − b, A = XᵀX + cI, b = Xᵀy), gd with
# step η from w0 = 0; outer E(w, c) = ½‖X_v w − y_v‖² + ½c². With A = Q diag(a) Qᵀ and z = Qᵀb:
#   w_T = Q (φ(a) z),  φ(a) = (1 − r^T)/a,  r = 1 − ηa,
#   dw_T/dc = Q (φ'(a) z),  φ'(a) = (Tηr^{T−1}a − (1 − r^T))/a²  (da/dc = 1),
#   dw_T/dη = Q (T r^{T−1} z).
# ---------------------------------------------------------------------------------------------------

def ridge_closed_form(d, c: float, eta: float, T: int):
    """(E, dE/dc, dE/dη) of T gd steps, from the spectral formulas above."""
    X, y, Xv, yv = (d[k].numpy() for k in ("X", "y", "Xv", "yv"))
    s, Q = np.linalg.eigh(X.T @ X)
    a, z = s + c, Q.T @ (X.T @ y)
    r = 1.0 - eta * a
    w = Q @ ((1.0 - r**T) / a * z)
    dw_dc = Q @ ((T * eta * r ** (T - 1) * a - (1.0 - r**T)) / a**2 * z)
    dw_deta = Q @ (T * r ** (T - 1) * z)
    residual = Xv @ w - yv
    g = Xv.T @ residual
    return 0.5 * residual @ residual + 0.5 * c**2, g @ dw_dc + c, g @ dw_deta


def ridge_lr(d, c: float) -> float:
    """A third of 1/a_max: every 1 − ηa_i in (0, 1), and dE/dη not yet vanishing at T = 100."""
    X = d["X"].numpy()
    return 0.3 / (np.linalg.eigvalsh(X.T @ X).max() + c)


def ridge_problem(d, opt_name: str = "gd", lr: float | None = None):
    """(step, E, w0, hparams): c the weight decay and η the learning rate, both hyperparameters."""
    def loss(p, h):
        r = d["X"] @ p["w"] - d["y"]
        return 0.5 * r @ r

    def outer(w, h):
        r = d["Xv"] @ w["w"] - d["yv"]
        return 0.5 * r @ r + 0.5 * h["c"] ** 2

    opt = {"gd": gd, "momentum": momentum, "adam": adam}[opt_name](loss, lr="lr", weight_decay="c")
    lr = ridge_lr(d, C) if lr is None else lr
    return opt.step, outer, opt.init({"w": torch.zeros(5, dtype=DTYPE)}), {"c": scalar(C), "lr": scalar(lr)}


# ---------------------------------------------------------------------------------------------------
# Softmax regression with a vector and with matrix hyperparameters
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


def representation_problem(d):
    """λ = (A1, A2), a representation tanh(x A1) A2 under a linear classifier trained by gd; E reads λ
    directly too (through the validation features)."""
    gen = torch.Generator().manual_seed(2)
    hparams = {"A1": (0.5 * torch.randn(4, 6, generator=gen, dtype=DTYPE)).requires_grad_(),
               "A2": (0.5 * torch.randn(6, 5, generator=gen, dtype=DTYPE)).requires_grad_()}

    def features(x, h):
        return torch.tanh(x @ h["A1"]) @ h["A2"]

    def loss(p, h):
        return F.cross_entropy(features(d["X"], h) @ p["W"], d["y"])

    def outer(w, h):
        return F.cross_entropy(features(d["Xv"], h) @ w["W"], d["yv"])

    opt = gd(loss, lr=0.5)
    return opt.step, outer, opt.init({"W": torch.zeros(5, 3, dtype=DTYPE)}), hparams


# ---------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------

class PeakBytes:
    """Peak bytes of the distinct storages kept alive by the tensors passed to `track` (a storage counts
    once, however many tensors share it, from the first tracked tensor until the last one is freed)."""

    def __init__(self):
        self.holders, self.live, self.peak = {}, 0, 0

    def track(self, x: torch.Tensor) -> torch.Tensor:
        for part in fwAD.unpack_dual(x):  # a dual tensor holds its primal and its tangent
            if part is None or part._is_zerotensor():  # a zero tangent has no storage
                continue
            storage = part.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if not self.holders.get(key):
                self.live += size
                self.peak = max(self.peak, self.live)
            self.holders[key] = self.holders.get(key, 0) + 1
            weakref.finalize(x, self._release, key, size)
        return x

    def _release(self, key: int, size: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            self.live -= size


def peak_bytes(method: str, T: int, **options) -> int:
    """Peak bytes held by autograd's saved tensors and by the states of T gd steps on a 50-parameter least
    squares problem (λ = the weight decay), during one hypergradient call."""
    gen = torch.Generator().manual_seed(4)
    X, y = torch.randn(20, 50, generator=gen, dtype=DTYPE), torch.randn(20, generator=gen, dtype=DTYPE)
    opt = gd(lambda p, h: 0.5 * ((X @ p["w"] - y) ** 2).sum(), lr=1e-3, weight_decay="c")
    meter = PeakBytes()

    def step(w, h, t):
        return {k: meter.track(v) for k, v in opt.step(w, h, t).items()}

    with torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x):
        hypergradient(step, lambda w, h: (w["w"] ** 2).sum(), {"w": torch.zeros(50, dtype=DTYPE)},
                      {"c": scalar(C)}, T, method=method, **options)
    return meter.peak


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
    "ridge-momentum": (lambda d: ridge_problem(d["ridge"], "momentum"), 12),
    "ridge-adam": (lambda d: ridge_problem(d["ridge"], "adam", lr=0.05), 12),
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
    """The cost model: with c, η and a 2×3 tensor (8 scalars), `step` runs T = 4 times in order, t = 0..3,
    once per scalar (tangent direction)."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)
    seen = []

    def counting_step(w, h, t):
        seen.append(t)
        return step(w, h, t)

    hypergradient(counting_step, outer, w0, hparams, 4, method="forward")
    assert seen == [0, 1, 2, 3] * 8


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
