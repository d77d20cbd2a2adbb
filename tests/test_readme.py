"""The README's Python example runs and its hypergradient is right."""

import re
from pathlib import Path

import torch


def test_readme_python_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    scope = {}
    exec(example, scope)
    value, grads = scope["value"], scope["grads"]
    assert value.ndim == 0 and grads.keys() == {"l2"} and torch.isfinite(grads["l2"])
    l2 = scope["hparams"]["l2"].detach()
    X, y, Xv, yv = (scope[k] for k in ("X", "y", "Xv", "yv"))

    def outer(c):  # the same 100 gradient steps, unrolled by hand
        w = torch.zeros(5)
        for _ in range(100):
            w = w - 0.1 * (2 * X.T @ (X @ w - y) / len(y) + c * w)
        return ((Xv @ w - yv) ** 2).mean()

    h = 1e-3
    assert torch.allclose(grads["l2"], (outer(l2 + h) - outer(l2 - h)) / (2 * h), rtol=1e-2, atol=1e-5)
