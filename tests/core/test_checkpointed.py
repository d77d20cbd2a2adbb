"""Tests of checkpointed reverse mode (`method="checkpointed"`): the same hypergradient as `reverse` for
every segment length, the recomputation schedule, and memory ∝ T/segment + segment.

References: `reverse`, the closed form of T gradient-descent steps on ridge regression, and the peak bytes
of the distinct storages held by autograd's saved tensors or by the states `step` returns. Everything is
float64.
"""

import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bilevel_cli.core import gd, hypergradient, momentum

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


def ridge_problem(d, opt=gd):
    """Ridge regression, c (weight decay, also ½c² in E) and η (learning rate) the hyperparameters, w0 = 0;
    η is well inside the stable range of gd."""
    def loss(p, h):
        r = d["X"] @ p["w"] - d["y"]
        return 0.5 * r @ r

    def outer(w, h):
        r = d["Xv"] @ w["w"] - d["yv"]
        return 0.5 * r @ r + 0.5 * h["c"] ** 2

    inner = opt(loss, lr="lr", weight_decay="c")
    X = d["X"].numpy()
    eta = 0.3 / (np.linalg.eigvalsh(X.T @ X).max() + C)
    return inner.step, outer, inner.init({"w": torch.zeros(5, dtype=DTYPE)}), {"c": scalar(C), "lr": scalar(eta)}


def ridge_closed_form(d, c: float, eta: float, T: int):
    """(dE/dc, dE/dη) of T gd steps from w0 = 0 on ridge regression, with A = XᵀX + cI = Q diag(a) Qᵀ,
    z = QᵀXᵀy, r = 1 − ηa: w_T = Q((1 − r^T)/a·z), dw_T/dc = Q((Tηr^{T−1}a − (1 − r^T))/a²·z),
    dw_T/dη = Q(Tr^{T−1}·z); E = ½‖X_v w − y_v‖² + ½c²."""
    X, y, Xv, yv = (d[k].numpy() for k in ("X", "y", "Xv", "yv"))
    s, Q = np.linalg.eigh(X.T @ X)
    a, z = s + c, Q.T @ (X.T @ y)
    r = 1.0 - eta * a
    g = Xv.T @ (Xv @ (Q @ ((1.0 - r**T) / a * z)) - yv)
    return (g @ Q @ ((T * eta * r ** (T - 1) * a - (1.0 - r**T)) / a**2 * z) + c,
            g @ Q @ (T * r ** (T - 1) * z))


def representation_problem(d):
    """λ = (A1, A2), a representation tanh(x A1) A2 under a linear classifier trained by gd; E reads λ
    directly too."""
    gen = torch.Generator().manual_seed(2)
    hparams = {"A1": (0.5 * torch.randn(4, 6, generator=gen, dtype=DTYPE)).requires_grad_(),
               "A2": (0.5 * torch.randn(6, 5, generator=gen, dtype=DTYPE)).requires_grad_()}

    def features(x, h):
        return torch.tanh(x @ h["A1"]) @ h["A2"]

    opt = gd(lambda p, h: F.cross_entropy(features(d["X"], h) @ p["W"], d["y"]), lr=0.5)

    def outer(w, h):
        return F.cross_entropy(features(d["Xv"], h) @ w["W"], d["yv"])

    return opt.step, outer, opt.init({"W": torch.zeros(5, 3, dtype=DTYPE)}), hparams


class PeakBytes:
    """Peak bytes of the distinct storages kept alive by the tensors passed to `track` (a storage counts
    once, however many tensors share it, from the first tracked tensor until the last one is freed)."""

    def __init__(self):
        self.holders, self.live, self.peak = {}, 0, 0

    def track(self, x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
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
    """Peak bytes held by autograd's saved tensors and by the states (checkpoints included) of T gd steps
    on a 50-parameter least squares problem (λ = the weight decay), during one hypergradient call."""
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


T_SEGMENTS = 10
SEGMENTS = [1, 2, 3, 4, T_SEGMENTS, T_SEGMENTS + 5, None]  # 3 and 4 do not divide T; None is ⌈√T⌉ = 4


@pytest.mark.parametrize("segment", SEGMENTS)
def test_checkpointed_equals_reverse_for_every_segment(ridge_data, classification_data, segment):
    """For segment lengths 1, 2, 3, 4, T, T + 5 and the default, checkpointed equals reverse to 1e-12
    relative error, with the same outer value: momentum on ridge (c and η; the velocity buffer is in the
    checkpoints) and a representation network (two matrix hyperparameters, also in E directly), T = 10."""
    options = {} if segment is None else {"segment": segment}
    for step, outer, w0, hparams in [ridge_problem(ridge_data, momentum), representation_problem(classification_data)]:
        value, expected = hypergradient(step, outer, w0, hparams, T_SEGMENTS, method="reverse")
        other_value, grads = hypergradient(step, outer, w0, hparams, T_SEGMENTS, method="checkpointed", **options)
        assert other_value.item() == pytest.approx(value.item(), rel=1e-14)
        assert_same(grads, expected, rtol=1e-12)


@pytest.mark.parametrize("T", [1, 5, 20, 100])
def test_checkpointed_matches_ridge_closed_form(ridge_data, T):
    """c and η in one call, default segment: dE/dc and dE/dη match the spectral closed form to 1e-10."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    _, grads = hypergradient(step, outer, w0, hparams, T, method="checkpointed")
    dc, deta = ridge_closed_form(ridge_data, C, hparams["lr"].item(), T)
    assert grads["c"].item() == pytest.approx(dc, rel=1e-10)
    assert grads["lr"].item() == pytest.approx(deta, rel=1e-10)


def test_checkpointed_recomputes_segments_last_first(ridge_data):
    """T = 7, segment 3: one pass t = 0..6 (keeping checkpoints at 0, 3, 6), then the segments recomputed
    from their checkpoints, last first: [6], [3, 4, 5], [0, 1, 2]."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    seen = []

    def counting_step(w, h, t):
        seen.append(t)
        return step(w, h, t)

    hypergradient(counting_step, outer, w0, hparams, 7, method="checkpointed", segment=3)
    assert seen == [0, 1, 2, 3, 4, 5, 6, 6, 3, 4, 5, 0, 1, 2]


def test_checkpointed_memory_is_a_fifth_of_reverse_at_T_400():
    """At T = 400 the default segment (20) keeps at most a fifth of the bytes reverse keeps (checkpoints
    counted); segment 1 (every state a checkpoint) and segment T (one segment, the whole graph) each keep
    more than twice the default: the cost ∝ T/segment + segment is smallest near √T."""
    reverse, default = peak_bytes("reverse", 400), peak_bytes("checkpointed", 400)
    assert default <= reverse / 5, (default, reverse)
    for segment in (1, 400):
        assert peak_bytes("checkpointed", 400, segment=segment) > 2 * default


@pytest.mark.parametrize("segment", [0, -2])
def test_checkpointed_segment_below_one_raises(ridge_data, segment):
    """segment < 1 is a ValueError that names the option."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    with pytest.raises(ValueError, match="segment"):
        hypergradient(step, outer, w0, hparams, 5, method="checkpointed", segment=segment)


def test_checkpointed_T_zero_and_unused_hparam(ridge_data):
    """T = 0 never calls `step` and returns E(w0) with the direct term only (c for ½c², 0 for η); an hparam
    that nothing reads gets an exact zero of its shape; the value carries no graph."""
    _, outer, w0, hparams = ridge_problem(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)

    def step(w, h, t):
        raise AssertionError("step must not be called when T = 0")

    value, grads = hypergradient(step, outer, w0, hparams, 0, method="checkpointed")
    assert list(grads) == list(hparams) and not value.requires_grad
    expected = 0.5 * (ridge_data["yv"] @ ridge_data["yv"]).item() + 0.5 * C**2
    assert value.item() == pytest.approx(expected, rel=1e-14)
    assert grads["c"].item() == pytest.approx(C, rel=1e-14)
    assert grads["lr"].item() == 0.0
    assert torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
