"""Reversible learning (Maclaurin, Duvenaud & Adams, ICML 2015): the exact reverse-mode hypergradient through T steps
of heavy-ball momentum, without storing the trajectory.

The forward pass runs the dynamics of a `MomentumStep` (`bilevel_cli.core.momentum`),

    v_{t+1} = γ_t·v_t + g_t(w_t),    w_{t+1} = w_t − η_t·v_{t+1},

in fixed point: w and v are int64 integers, value = integer·2^-bits. Adding g_t(w_t) and subtracting η_t·v_{t+1},
both rounded to that grid, are undone exactly by the opposite operations, because w_t is recovered first and
g_t(w_t) recomputed from it bit for bit. Multiplying by γ_t is what destroys information: γ_t is applied as the
rational n_t/2^30 and the low digits the product discards are pushed onto a buffer, one arbitrary-precision
non-negative integer per parameter, from which the backward pass pops them to recover v_t exactly. Maclaurin's trick
keeps the growth of that buffer at log2(1/γ_t) bits per parameter and step instead of 30: before the division by
2^30, the product borrows log2(n_t) bits already stored as its lowest digits.

The backward pass walks the steps last first: it recovers (w_t, v_t) from (w_{t+1}, v_{t+1}), builds the graph of
step t alone at that state, and back-propagates the adjoint through it, as `reverse` does through its stored graph.
Time: about 2× `reverse` (each step's gradient is computed in both passes) plus the integer arithmetic, whose cost
per step grows with the buffer (2–4× `reverse` measured, BENCHMARKS.md); memory: the state, the buffer
(≈ 30 + T·log2(1/γ) bits per parameter, in 32-bit limbs) and one step's graph, instead of T steps' graphs.

The hypergradient is that of the fixed-point dynamics: they differ from floating-point ones by about one unit of
2^-bits per operation, and γ_t by at most 2^-31; the derivatives treat both roundings as the identity.
"""

from typing import Callable, NamedTuple

import torch

from bilevel_cli.core import autodiff as ad
from bilevel_cli.core.autodiff import Tensors

MOMENTUM_BITS = 30  # γ_t is applied as n_t / 2^30, so 1 ≤ n_t ≤ 2^30 and every product below fits in int64
LIMB_BITS = 32  # the buffer's digits, base 2^32, one per int64: a digit times a radix ≤ 2^30 stays below 2^62
SPLIT_BITS = 31  # x·n_t is formed as (x >> 31)·n_t·2^31 + (x mod 2^31)·n_t, each part below 2^62
STATE_LIMIT = 2 ** 62  # |w|, |v| below it keep the split product in range
INCREMENT_LIMIT = 2 ** 61  # |g|, |η·v| below it keep a sum with the state below 2^63 until it is checked


class ExactState(NamedTuple):
    """Momentum SGD's state in fixed point: the parameters `w` and their velocities `v`, each flattened into one
    int64 vector in the order of `layout` ((name, shape, dtype) per parameter), value = integer·2^-bits; and the
    `buffer` of the digits the momentum discarded, a non-negative integer per parameter as int64 limbs of 32 bits,
    least significant first."""
    w: torch.Tensor
    v: torch.Tensor
    buffer: tuple[torch.Tensor, ...]
    layout: tuple[tuple[str, torch.Size, torch.dtype], ...]
    bits: int


def reversible(step, outer_loss: Callable, w0: Tensors, hparams: Tensors, T: int, bits: int = 44):
    """Exact reverse-mode hypergradient through T steps of heavy-ball momentum by reversing them (see the module
    docstring). `step` must be a `MomentumStep` (built by `momentum`), `w0` its state (parameters and their
    "<name>@velocity"); learning rate, momentum and weight decay may be numbers, hparams or schedules of hparams.
    `bits` sets the fixed-point grid 2^-bits, and with it the range: |w|, |v| < 2^(62 − bits) (2^18 at the default).
    When `w0` depends on λ (initial weights as a hyperparameter), the adjoint of w_0 is carried into λ."""
    if not all(hasattr(step, part) for part in ("gradient", "lr", "momentum")):
        raise ValueError("reversible needs heavy-ball momentum dynamics: a step built by bilevel_cli.core.momentum "
                         "(inner=momentum)")
    if not 0 <= bits <= 62:
        raise ValueError(f"reversible: bits must be in [0, 62], got bits={bits}")
    start = to_exact(w0, bits)
    state = start
    for t in range(T):
        state = exact_step(step, state, hparams, t)
    value, adjoint, grads = ad.outer_gradients(outer_loss, from_exact(state), hparams)
    for t in reversed(range(T)):
        state, leaves, gradient = _retreat(step, state, hparams, t)
        adjoint, contribution = _step_vjp(step, state, leaves, gradient, hparams, t, adjoint)
        grads = {k: g + c for (k, g), c in zip(grads.items(), contribution)}
    _check_retraced(state, start)
    grads = _initial_state_vjp(w0, adjoint, hparams, grads)
    return value, grads


def to_exact(w: Tensors, bits: int = 44) -> ExactState:
    """A momentum state {params, "<name>@velocity"} in fixed point, with an empty buffer."""
    params = [k for k in w if "@" not in k]
    if set(w) != {*params, *(f"{k}@velocity" for k in params)}:
        raise ValueError(f"reversible: the inner state must hold parameters and their '@velocity' only, got {list(w)}")
    layout = tuple((k, w[k].shape, w[k].dtype) for k in params)
    flat_w = _encode(torch.cat([w[k].detach().reshape(-1) for k in params]), bits)
    flat_v = _encode(torch.cat([w[f"{k}@velocity"].detach().reshape(-1) for k in params]), bits)
    return ExactState(flat_w, flat_v, (torch.zeros_like(flat_w),), layout, bits)


def from_exact(state: ExactState) -> Tensors:
    """The state as floating-point tensors, keyed as `momentum(...).init` keys it."""
    velocities = {f"{k}@velocity": v for k, v in _unflatten(state, state.v).items()}
    return {**_unflatten(state, state.w), **velocities}


def exact_step(step, state: ExactState, hparams: Tensors, t: int) -> ExactState:
    """Step t in fixed point: v ← γ_t·v + g_t(w) with the discarded digits pushed onto the buffer, w ← w − η_t·v."""
    _, gradient = _gradient_at(step, state, hparams, t)
    with torch.no_grad():
        v, buffer = _multiply(state.v, state.buffer, _numerator(step.momentum(hparams, t), state))
        v = _in_range(v + _encode(_flatten(gradient), state.bits))
        w = _in_range(state.w - _lr_times(step, state, v, hparams, t))
    return state._replace(w=w, v=v, buffer=buffer)


def exact_reverse_step(step, state: ExactState, hparams: Tensors, t: int) -> ExactState:
    """The state before step t, from the state after it: `exact_step` undone bit for bit."""
    return _retreat(step, state, hparams, t)[0]


def _retreat(step, state: ExactState, hparams: Tensors, t: int):
    """(state before step t, the float w_t as autograd leaves, g_t(w_t) with its graph from them)."""
    with torch.no_grad():
        w = state.w + _lr_times(step, state, state.v, hparams, t)
    before = state._replace(w=w)
    leaves, gradient = _gradient_at(step, before, hparams, t)
    with torch.no_grad():
        scaled = state.v - _encode(_flatten(gradient), state.bits)
        v, buffer = _divide(scaled, state.buffer, _numerator(step.momentum(hparams, t), state))
    return before._replace(v=v, buffer=buffer), leaves, gradient


def _gradient_at(step, state: ExactState, hparams: Tensors, t: int):
    """(the float w as autograd leaves, g_t(w) with its graph). Both passes compute the gradient through this one
    path, with the graph, so that its bits agree."""
    with torch.enable_grad():
        leaves = {k: x.detach().requires_grad_() for k, x in _unflatten(state, state.w).items()}
        return leaves, step.gradient(leaves, hparams, t)


def _step_vjp(step, before: ExactState, leaves: Tensors, gradient: Tensors, hparams: Tensors, t: int,
              adjoint: Tensors):
    """(adjoint of the state before step t, the step's contribution to dE/dλ), by back-propagating `adjoint` (keyed
    like the state) through the floating-point graph of step t at the recovered state."""
    with torch.enable_grad():
        velocity = {k: x.detach().requires_grad_() for k, x in _unflatten(before, before.v).items()}
        eta, gamma = step.lr(hparams, t), _applied_momentum(step.momentum(hparams, t))
        v_next = {k: gamma * velocity[k] + g for k, g in gradient.items()}
        w_next = {k: leaves[k] - eta * v for k, v in v_next.items()}
    outputs = {**w_next, **{f"{k}@velocity": v for k, v in v_next.items()}}
    vjp = ad.vjp(outputs, adjoint, [*leaves.values(), *velocity.values(), *hparams.values()])
    n = len(leaves)
    previous = {**dict(zip(leaves, vjp[:n])), **{f"{k}@velocity": d for k, d in zip(velocity, vjp[n:2 * n])}}
    return previous, vjp[2 * n:]


def _initial_state_vjp(w0: Tensors, adjoint: Tensors, hparams: Tensors, grads: Tensors) -> Tensors:
    """grads plus the adjoint of w_0 carried into λ, for the entries of w0 computed from λ."""
    dependent = [k for k, x in w0.items() if x.requires_grad]
    if not dependent:
        return grads
    vjp = ad.vjp({k: w0[k] for k in dependent}, adjoint, list(hparams.values()))
    return {k: g + d for (k, g), d in zip(grads.items(), vjp)}


def _check_retraced(state: ExactState, start: ExactState) -> None:
    """The backward pass must end where the forward pass began, with the buffer emptied: else some step's gradient
    was not reproduced bit for bit, and the hypergradient was taken along a wrong trajectory."""
    if not (torch.equal(state.w, start.w) and torch.equal(state.v, start.v) and len(state.buffer) == 1
            and not bool(state.buffer[0].any())):
        raise RuntimeError("reversible: the reversed trajectory did not end at w_0; the inner gradient is not "
                           "deterministic (on CUDA, call torch.use_deterministic_algorithms(True))")


# ---------------------------------------------------------------------------------------------------------------------
# Fixed point
# ---------------------------------------------------------------------------------------------------------------------

def _encode(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x rounded to the grid 2^-bits, as integers (scaling by a power of two is exact; rounding is half to even)."""
    scaled = x.detach().double() * 2.0 ** bits
    low, high = torch.aminmax(scaled)
    if not bool((high < INCREMENT_LIMIT) & (low > -INCREMENT_LIMIT)):  # also catches NaN
        raise OverflowError(f"reversible: a value of magnitude {x.abs().max().item():.3g} does not fit the "
                            f"fixed-point range ±2^{61 - bits} at bits={bits}; lower hypergrad.options.bits")
    return scaled.round().long()


def _in_range(x: torch.Tensor) -> torch.Tensor:
    low, high = torch.aminmax(x)
    if not bool((high < STATE_LIMIT) & (low > -STATE_LIMIT)):
        raise OverflowError("reversible: the inner state left the fixed-point range; lower hypergrad.options.bits "
                            "or check that the inner dynamics do not diverge")
    return x


def _unflatten(state: ExactState, x: torch.Tensor) -> Tensors:
    sizes = [shape.numel() for _, shape, _ in state.layout]
    values = x.double() * 2.0 ** -state.bits
    return {k: part.view(shape).to(dtype) for (k, shape, dtype), part in zip(state.layout, values.split(sizes))}


def _flatten(x: Tensors) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in x.values()])


def _lr_times(step, state: ExactState, v: torch.Tensor, hparams: Tensors, t: int) -> torch.Tensor:
    """η_t·v on the grid, as integers: the same bits whichever pass asks."""
    with torch.no_grad():
        eta = step.lr(hparams, t)
        return _encode(_flatten({k: eta * x for k, x in _unflatten(state, v).items()}), state.bits)


def _applied_momentum(gamma):
    """γ_t as the dynamics apply it, n_t/2^30 (in γ_t's own type), with the derivative of γ_t itself."""
    if not isinstance(gamma, torch.Tensor):
        return round(gamma * 2 ** MOMENTUM_BITS) / 2 ** MOMENTUM_BITS
    rounded = torch.round(gamma.detach().double() * 2 ** MOMENTUM_BITS) / 2 ** MOMENTUM_BITS
    return gamma + (rounded.to(gamma.dtype) - gamma).detach()


def _numerator(gamma, state: ExactState) -> torch.Tensor:
    """n_t = round(γ_t·2^30) as int64: a scalar, or one per parameter entry when γ_t is a tensor."""
    gamma = torch.as_tensor(gamma).detach().to(device=state.w.device, dtype=torch.float64)
    n = torch.round(gamma * 2 ** MOMENTUM_BITS).long()
    if not bool(((n >= 1) & (n <= 2 ** MOMENTUM_BITS)).all()):
        raise ValueError(f"reversible: the momentum must be in [2^-31, 1], got {gamma.min().item():.3g} to "
                         f"{gamma.max().item():.3g}")
    if n.dim() == 0:
        return n
    return torch.cat([n.expand(shape).reshape(-1) for _, shape, _ in state.layout])


def _multiply(x: torch.Tensor, buffer: tuple[torch.Tensor, ...], n: torch.Tensor):
    """(⌊(x·n + r)/2^30⌋, buffer) with r popped from the buffer (r < n) and the remainder of the division pushed:
    γ·x to within one unit, invertible by `_divide`, the buffer grown by log2(2^30/n) bits. In place on fresh
    tensors, as `_push`."""
    buffer, borrowed = _pop(buffer, n)
    high = x >> SPLIT_BITS  # x = high·2^31 + low, 0 ≤ low < 2^31
    low = (x & (2 ** SPLIT_BITS - 1)).mul_(n).add_(borrowed)  # x·n + r = high·n·2^31 + low; 2^30 divides the first
    buffer = _push(buffer, low & (2 ** MOMENTUM_BITS - 1), 2 ** MOMENTUM_BITS)
    return high.mul_(n).mul_(2 ** (SPLIT_BITS - MOMENTUM_BITS)).add_(low.bitwise_right_shift_(MOMENTUM_BITS)), buffer


def _divide(y: torch.Tensor, buffer: tuple[torch.Tensor, ...], n: torch.Tensor):
    """The inverse of `_multiply`: z = y·2^30 + (digit popped) is x·n + r; x = ⌊z/n⌋ and r = z mod n goes back."""
    buffer, digit = _pop(buffer, 2 ** MOMENTUM_BITS)
    quotient = torch.div(y, n, rounding_mode="floor")
    low = torch.sub(y, quotient * n).mul_(2 ** MOMENTUM_BITS).add_(digit)  # z = quotient·n·2^30 + low, low < n·2^30
    part = torch.div(low, n, rounding_mode="floor")
    buffer = _push(buffer, low.sub_(part * n), n)
    return quotient.mul_(2 ** MOMENTUM_BITS).add_(part), buffer


def _push(buffer: tuple[torch.Tensor, ...], digit: torch.Tensor, radix) -> tuple[torch.Tensor, ...]:
    """buffer·radix + digit (0 ≤ digit < radix ≤ 2^30), limb by limb with the carry; a limb is added when needed.
    In place on fresh tensors only (the limbs of `buffer` are left as they are): each int64 operation over the
    parameters costs an allocation otherwise, which dominated the time."""
    limbs, carry = [], digit.clone()
    for limb in buffer:
        value = (limb * radix).add_(carry)  # < 2^32·2^30
        torch.bitwise_right_shift(value, LIMB_BITS, out=carry)
        limbs.append(value.bitwise_and_(2 ** LIMB_BITS - 1))
    if bool(carry.any()):
        limbs.append(carry)
    return tuple(limbs)


def _pop(buffer: tuple[torch.Tensor, ...], radix) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """(⌊buffer/radix⌋, buffer mod radix), long division from the most significant limb; emptied top limbs dropped.
    The running remainder is updated in place, for the reason `_push` gives."""
    limbs, remainder = [], torch.zeros_like(buffer[0])
    for limb in reversed(buffer):
        remainder.bitwise_left_shift_(LIMB_BITS).bitwise_or_(limb)  # < radix·2^32 ≤ 2^62
        quotient = torch.div(remainder, radix, rounding_mode="floor")
        remainder.sub_(quotient * radix)
        limbs.append(quotient)
    limbs.reverse()
    while len(limbs) > 1 and not bool(limbs[-1].any()):
        limbs.pop()
    return tuple(limbs), remainder
