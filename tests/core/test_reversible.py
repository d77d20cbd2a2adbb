"""Tests of reversible learning (`method="reversible"`): the integer arithmetic it rests on, the bit-for-bit reversal
of the trajectory, the hypergradient against `reverse`, the size of the buffer, and its errors.

The problem is ridge regression trained by heavy-ball momentum with every hyperparameter of Maclaurin et al.: a
learning-rate schedule, a momentum schedule, the weight decay and the initial weights. Everything is float64.
"""

import dataclasses
import math

import pytest
import torch

from bilevel_cli.core import Schedule, gd, hypergradient, momentum
from bilevel_cli.core.reversible import (MOMENTUM_BITS, _divide, _multiply, exact_reverse_step, exact_step,
                                         from_exact, to_exact)
from bilevel_cli.core.saved_bytes import SavedBytes
from problems import DTYPE, assert_same

T = 40


def on_momentum_grid(x: torch.Tensor) -> torch.Tensor:
    """x rounded to a multiple of 2^-30: the momentum the fixed-point dynamics apply, so that `reverse` runs the
    same γ_t and the comparison measures the state's rounding only."""
    return torch.round(x * 2 ** MOMENTUM_BITS) / 2 ** MOMENTUM_BITS


def ridge_momentum(d, T: int = T, mu=None, dtype=DTYPE):
    """(step, E, w0 builder, hparams): ½‖Xw − y‖² by momentum with a learning-rate schedule of length T, weight decay
    c and initial weights w0 as hyperparameters, and a momentum that is a schedule hparam (mu None), a scalar hparam
    (mu a tensor) or a constant (mu a number); E = ½‖X_v w − y_v‖² + ½c²."""
    gen = torch.Generator().manual_seed(5)
    schedule = on_momentum_grid(torch.linspace(0.5, 0.9, T, dtype=dtype))
    hparams = {"lr": torch.linspace(0.01, 0.02, T, dtype=dtype).requires_grad_(),
               "c": torch.tensor(0.3, dtype=dtype, requires_grad=True),
               "w0": torch.randn(5, generator=gen, dtype=dtype).requires_grad_(),
               **({"mu": (schedule if mu is None else mu).requires_grad_()} if not isinstance(mu, float) else {})}
    X, y, Xv, yv = (d[k].to(dtype) for k in ("X", "y", "Xv", "yv"))
    opt = momentum(lambda p, h: 0.5 * (X @ p["w"] - y).square().sum(), lr=Schedule("lr"),
                   momentum=mu if isinstance(mu, float) else Schedule("mu") if mu is None else "mu", weight_decay="c")

    def outer(w, h):
        return 0.5 * (Xv @ w["w"] - yv).square().sum() + 0.5 * h["c"] ** 2

    return opt.step, outer, lambda: opt.init({"w": hparams["w0"]}), hparams


def trajectory(step, w0, hparams, T: int, bits: int = 44):
    states = [to_exact(w0, bits)]
    for t in range(T):
        states.append(exact_step(step, states[-1], hparams, t))
    return states


def assert_same_state(a, b, t):
    assert torch.equal(a.w, b.w) and torch.equal(a.v, b.v), f"state at t={t} differs"
    assert len(a.buffer) == len(b.buffer) and all(map(torch.equal, a.buffer, b.buffer)), f"buffer at t={t} differs"


def buffer_bits(buffer) -> int:
    """The bit length of the largest of the buffer's integers (its limbs are 32 bits, least significant first)."""
    top = int(buffer[-1].max())
    return 32 * (len(buffer) - 1) + top.bit_length()


def test_multiply_is_momentum_to_one_unit_and_divide_undoes_it():
    """On int64 values across the whole allowed range (|x| < 2^62, both signs, the extremes) and momenta from 2^-30
    to 1: `_multiply` gives x·n/2^30 to within one unit and `_divide` recovers x and the buffer bit for bit, over
    twenty products in a row on the same buffer."""
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randint(-2 ** 62 + 1, 2 ** 62, (500,), generator=gen),
                   torch.tensor([0, 1, -1, 2 ** 62 - 1, -2 ** 62 + 1])])
    numerators = [1, 3, 2 ** 29, 966367642, 2 ** 30 - 1, 2 ** 30]
    buffer, values, history = (torch.zeros_like(x),), x, []
    for i in range(20):
        n = torch.tensor(numerators[i % len(numerators)])
        history.append((values, buffer))
        product, buffer = _multiply(values, buffer, n)
        exact = [v * int(n) / 2 ** MOMENTUM_BITS for v in values.tolist()]  # Python ints: no rounding before this
        assert max(abs(p - e) for p, e in zip(product.tolist(), exact)) <= 1
        values = product
    for i in reversed(range(20)):
        values, buffer = _divide(values, buffer, torch.tensor(numerators[i % len(numerators)]))
        assert torch.equal(values, history[i][0]) and all(map(torch.equal, buffer, history[i][1]))


def test_reversed_trajectory_equals_the_forward_one_bit_for_bit(ridge_data):
    """T = 40 fixed-point steps forward, then 40 back: every recovered state (w_t, v_t and the buffer) equals the one
    the forward pass produced, as integers."""
    step, _, w0, hparams = ridge_momentum(ridge_data)
    states = trajectory(step, w0(), hparams, T)
    state = states[-1]
    for t in reversed(range(T)):
        state = exact_reverse_step(step, state, hparams, t)
        assert_same_state(state, states[t], t)
    assert len(state.buffer) == 1 and not state.buffer[0].any()


def test_hypergradient_equals_reverse_on_the_same_trajectory(ridge_data):
    """Reverse mode through steps whose outputs are snapped to the fixed-point trajectory (the snap adds a constant,
    so the derivatives are the float step's) evaluates the same Jacobians at the same states as the reversed pass:
    the hypergradients agree to 1e-13 on the lr and momentum schedules, c and w0, only summation order apart."""
    step, outer, w0, hparams = ridge_momentum(ridge_data)
    exact = [from_exact(s) for s in trajectory(step, w0(), hparams, T)]

    def snapped(w, h, t):
        return {k: x + (exact[t + 1][k] - x).detach() for k, x in step(w, h, t).items()}

    value, expected = hypergradient(snapped, outer, w0(), hparams, T, method="reverse")
    other_value, grads = hypergradient(step, outer, w0(), hparams, T, method="reversible")
    assert other_value.item() == pytest.approx(value.item(), rel=1e-14)
    assert min(g.norm().item() for g in expected.values()) > 1e-3, "a vanishing reference proves nothing"
    assert_same(grads, expected, rtol=1e-13)


@pytest.mark.parametrize("bits, rtol", [(44, 1e-10), (52, 1e-12)])
def test_hypergradient_equals_reverse_in_float64(ridge_data, bits, rtol):
    """Against plain `reverse` on the float64 dynamics. The fixed-point steps round each update to 2^-bits (5.7e-14
    at 44, 2.2e-16 at 52, against entries of order 1); over 40 steps that moves the hypergradients by at most 1.2e-11
    and 9e-14 relative here (most on the schedules, each entry of which one step alone reads): the tolerances leave
    about 10× above that."""
    step, outer, w0, hparams = ridge_momentum(ridge_data)
    value, expected = hypergradient(step, outer, w0(), hparams, T, method="reverse")
    other_value, grads = hypergradient(step, outer, w0(), hparams, T, method="reversible", bits=bits)
    assert other_value.item() == pytest.approx(value.item(), rel=rtol)
    assert_same(grads, expected, rtol=rtol)


def test_scalar_momentum_hparam_and_float32(ridge_data):
    """A scalar momentum hparam (0.75, on the grid) and a float32 problem: the hypergradients agree with reverse to
    float32 precision and come back in float32."""
    step, outer, w0, hparams = ridge_momentum(ridge_data, mu=torch.tensor(0.75), dtype=torch.float32)
    _, expected = hypergradient(step, outer, w0(), hparams, T, method="reverse")
    _, grads = hypergradient(step, outer, w0(), hparams, T, method="reversible")
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert_same(grads, expected, rtol=1e-4)


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_buffer_grows_by_log2_of_one_over_momentum_per_step(ridge_data, gamma):
    """After T = 200 steps at constant γ the buffer holds 30 bits (the first step has nothing to borrow) plus
    T·log2(1/γ): 200 bits at γ = 0.5, 30 at 0.9, to within 2 bits; and the backward pass empties it."""
    T_long = 200
    step, _, w0, hparams = ridge_momentum(ridge_data, T=T_long, mu=gamma)
    final = trajectory(step, w0(), hparams, T_long)[-1]
    expected = MOMENTUM_BITS + T_long * math.log2(1 / gamma)
    assert abs(buffer_bits(final.buffer) - expected) <= 2, (buffer_bits(final.buffer), expected)


def test_saved_tensors_do_not_grow_with_T(ridge_data):
    """Autograd keeps one step's graph at a time: the peak bytes of saved tensors at T = 200 are those at T = 10
    (within 1.5×), while reverse's grow by more than 5× over the same range. The schedules, which the graph
    references and which do grow with T, are the caller's and do not count."""
    def peak(method, T_run):
        step, outer, w0, hparams = ridge_momentum(ridge_data, T=T_run)
        meter = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x):
            hypergradient(step, outer, w0(), hparams, T_run, method=method)
        return meter.peak - sum(h.untyped_storage().nbytes() for h in hparams.values())

    assert peak("reversible", 200) <= 1.5 * peak("reversible", 10)
    assert peak("reverse", 200) > 5 * peak("reverse", 10)


def test_T_zero_and_unused_hparam(ridge_data):
    """T = 0: E(w0), its direct term in c and its gradient in w0; an hparam nothing reads gets an exact zero."""
    step, outer, w0, hparams = ridge_momentum(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)
    value, expected = hypergradient(step, outer, w0(), hparams, 0, method="reverse")
    other_value, grads = hypergradient(step, outer, w0(), hparams, 0, method="reversible")
    assert other_value.item() == pytest.approx(value.item(), rel=1e-13) and not other_value.requires_grad
    assert list(grads) == list(hparams) and torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
    assert_same(grads, expected, rtol=1e-12)


def test_a_gradient_that_is_not_reproducible_is_caught(ridge_data):
    """A gradient with fresh noise at every call cannot be retraced: the backward pass ends away from w_0 and the
    method says so instead of returning a hypergradient along a wrong trajectory."""
    step, outer, w0, hparams = ridge_momentum(ridge_data)
    def noisy_gradient(p, h, t):
        return {k: g + 1e-9 * torch.randn_like(g) for k, g in step.gradient(p, h, t).items()}

    noisy = dataclasses.replace(step, gradient=noisy_gradient)
    with pytest.raises(RuntimeError, match="not deterministic"):
        hypergradient(noisy, outer, w0(), hparams, 5, method="reversible")


def test_errors_name_the_problem(ridge_data):
    """A gd step (no momentum to reverse), a momentum of 0, and a state beyond the fixed-point range are refused."""
    step, outer, w0, hparams = ridge_momentum(ridge_data)
    plain = gd(lambda p, h: (p["w"] ** 2).sum(), lr=0.1)
    with pytest.raises(ValueError, match="heavy-ball momentum"):
        hypergradient(plain.step, outer, {"w": torch.zeros(5, dtype=DTYPE)}, hparams, 3, method="reversible")
    with pytest.raises(OverflowError, match="lower hypergrad.options.bits"):
        hypergradient(step, outer, w0(), hparams, 3, method="reversible", bits=60)
    with torch.no_grad():
        hparams["mu"][0] = 0.0
    with pytest.raises(ValueError, match="momentum must be in"):
        hypergradient(step, outer, w0(), hparams, 3, method="reversible")
