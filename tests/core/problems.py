"""Problems, references and measures shared by the tests of forward, checkpointed and implicit
hypergradients (a plain module, not a conftest: the tests import it as `from problems import ...`).

Every tensor is created with an explicit dtype (float64); the global default dtype is never changed.
"""

import numpy as np
import torch
import torch.nn.functional as F

from bilevel_cli.core import gd, hypergradient
from bilevel_cli.core.saved_bytes import SavedBytes

DTYPE = torch.float64
C = 0.3


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=DTYPE, requires_grad=True)


def assert_same(actual: dict, expected: dict, rtol: float) -> None:
    """Same keys, and ‖actual[k] − expected[k]‖ ≤ rtol·‖expected[k]‖ for every key."""
    assert list(actual) == list(expected)
    for k, e in expected.items():
        err, scale = (actual[k] - e).norm().item(), e.norm().item()
        assert err <= rtol * scale, f"{k}: error {err:.3e} against norm {scale:.3e}"


def recording_times(step):
    """`step`, wrapped to append each call's t to a list: (wrapped step, that list)."""
    seen = []

    def recorded(w, h, t):
        seen.append(t)
        return step(w, h, t)

    return recorded, seen


# ---------------------------------------------------------------------------------------------------
# Ridge regression. Inner L(w) = ½‖Xw − y‖² + (c/2)‖w‖² (gradient Aw − b, A = XᵀX + cI, b = Xᵀy), gd with
# step η from w0 = 0; outer E(w, c) = ½‖X_v w − y_v‖² + ½c². With A = Q diag(a) Qᵀ and z = Qᵀb:
#   w_T = Q (φ(a) z),  φ(a) = (1 − r^T)/a,  r = 1 − ηa,
#   dw_T/dc = Q (φ'(a) z),  φ'(a) = (Tηr^{T−1}a − (1 − r^T))/a²  (da/dc = 1),
#   dw_T/dη = Q (T r^{T−1} z).
# ---------------------------------------------------------------------------------------------------

def ridge_closed_form(d, c: float, eta: float, T: int):
    """(E, dE/dc, dE/dη) of T gd steps from w0 = 0, from the spectral formulas above."""
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


def ridge_problem(d, opt=gd, lr: float | None = None, direct: bool = True, lr_hparam: bool = True, **settings):
    """(step, E, w0, hparams) of ridge regression trained by `opt` (its `settings` passed on) from w0 = 0:
    c the weight decay, a hyperparameter; η = `lr` (`ridge_lr` by default), a hyperparameter too with
    `lr_hparam`, else a constant; E = ½‖X_v w − y_v‖², plus ½c² with `direct`."""
    def loss(p, h):
        r = d["X"] @ p["w"] - d["y"]
        return 0.5 * r @ r

    def outer(w, h):
        r = d["Xv"] @ w["w"] - d["yv"]
        return 0.5 * r @ r + (0.5 * h["c"] ** 2 if direct else 0.0)

    lr = ridge_lr(d, C) if lr is None else lr
    inner = opt(loss, lr="lr" if lr_hparam else lr, weight_decay="c", **settings)
    hparams = {"c": scalar(C), "lr": scalar(lr)} if lr_hparam else {"c": scalar(C)}
    return inner.step, outer, inner.init({"w": torch.zeros(5, dtype=DTYPE)}), hparams


# ---------------------------------------------------------------------------------------------------
# Softmax regression with matrix hyperparameters
# ---------------------------------------------------------------------------------------------------

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

def peak_bytes(method: str, T: int, **options) -> int:
    """Peak bytes held by autograd's saved tensors and by the states `step` returns (checkpoints included)
    of T gd steps on a 50-parameter least squares problem (λ = the weight decay), during one
    hypergradient call."""
    gen = torch.Generator().manual_seed(4)
    X, y = torch.randn(20, 50, generator=gen, dtype=DTYPE), torch.randn(20, generator=gen, dtype=DTYPE)
    opt = gd(lambda p, h: 0.5 * ((X @ p["w"] - y) ** 2).sum(), lr=1e-3, weight_decay="c")
    meter = SavedBytes()

    def step(w, h, t):
        return {k: meter.track(v) for k, v in opt.step(w, h, t).items()}

    with torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x):
        hypergradient(step, lambda w, h: (w["w"] ** 2).sum(), {"w": torch.zeros(50, dtype=DTYPE)},
                      {"c": scalar(C)}, T, method=method, **options)
    return meter.peak
