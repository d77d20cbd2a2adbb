"""The autograd pieces every hypergradient method shares: vector-Jacobian products on dicts of tensors."""

import torch
import torch.autograd.forward_ad as fwAD

Tensors = dict[str, torch.Tensor]


def vjp(outputs: Tensors, cotangent: Tensors, inputs: list[torch.Tensor], retain_graph: bool = False):
    """Σ_k cotangent[k]ᵀ ∂outputs[k]/∂x for each x in inputs, 0 for an input nothing depends on."""
    # The others are constants, e.g. E under first_order when it has no direct term.
    keys = [k for k, y in outputs.items() if y.requires_grad]
    grads = torch.autograd.grad([outputs[k] for k in keys], inputs, [cotangent[k] for k in keys],
                                retain_graph=retain_graph, allow_unused=True) if keys else [None] * len(inputs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def grad(value: torch.Tensor, hparams: Tensors) -> Tensors:
    """dE/dλ by key of hparams, an exact zero for an entry E does not depend on."""
    return dict(zip(hparams, vjp({"E": value}, {"E": torch.ones_like(value)}, list(hparams.values()))))


def leaves(w: Tensors) -> Tensors:
    """Each state tensor as a fresh autograd leaf that keeps its forward-mode tangent, if any: the graph
    of what follows starts here, and the inner optimizers differentiate at it as it is instead of
    detaching it (which would drop the tangent)."""
    out = {}
    for k, x in w.items():
        primal, tangent = fwAD.unpack_dual(x)
        # The dual is made first and marked second: a dual made of a leaf under no_grad is cut from it.
        out[k] = (primal.detach() if tangent is None else fwAD.make_dual(primal.detach(), tangent)).requires_grad_()
    return out


def outer_gradients(outer_loss, w: Tensors, hparams: Tensors):
    """(E(w, λ) detached, ∂E/∂w by key of w, ∂E/∂λ by key of hparams), with w a constant."""
    with torch.enable_grad():
        w = leaves(w)
        value = outer_loss(w, hparams)
    grads = vjp({"E": value}, {"E": torch.ones_like(value)}, [*w.values(), *hparams.values()])
    return value.detach(), dict(zip(w, grads[:len(w)])), dict(zip(hparams, grads[len(w):]))
