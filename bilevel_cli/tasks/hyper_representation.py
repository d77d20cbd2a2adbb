"""Few-shot learning with a hyper-representation (Franceschi et al., ICML 2018, §3.2 and Algorithm 1).

Outer variables λ: a backbone h_λ shared by all episodes (and, optionally, the inner learning rate).
Inner variables: one linear classifier (W, b) per episode, starting at zero, trained by T steps of
an inner optimizer on the support cross-entropy of h_λ's features. Outer loss: the query cross-entropy
of the trained classifiers, averaged over the meta-batch; it depends on λ through w_T and directly
through the query features.

The backbone runs once over the whole meta-batch; the inner problem is stated on the features, which
the core sees as an outer variable. Their hypergradient is then carried into the backbone by autograd.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_cli.core import OPTIMIZERS, hypergradient, unroll
from bilevel_cli.data.episodes import Episodes
from bilevel_cli.tasks.base import Task
from bilevel_cli.tasks.episodic import EpisodeProtocol


class HyperRepresentation(Task):
    def __init__(self, backbone: nn.Module, ways: int, T: int, method: str = "reverse",
                 method_options: dict | None = None, inner: str = "gd", inner_lr: float = 0.1,
                 learn_lr: bool = True, inner_options: dict | None = None, protocol: EpisodeProtocol | None = None,
                 closed_form: bool = True, precision: str = "fp32", curvature_scaled_rate: bool = False):
        super().__init__()
        self.backbone, self.ways, self.T, self.protocol = backbone, ways, T, protocol
        self.episodes_per_iteration = protocol.meta_batch if protocol else None
        self.method, self.method_options = method, dict(method_options or {})
        self.inner, self.inner_options = inner, dict(inner_options or {})
        # The support cross-entropy of a linear head has a closed-form gradient: the inner steps then need no
        # autograd, and reverse mode through them no double backward. False: autograd, as for any inner loss.
        self.closed_form = closed_form
        # bf16: the backbone's forward and backward under autocast; its features come back in the parameters' dtype,
        # so the inner problem, the hypergradient and the gradients' accumulation stay in full precision.
        self.precision = precision
        # A learned rate is an outer variable (an entry of hparams); a fixed one stays a number.
        self.inner_lr = nn.Parameter(torch.tensor(float(inner_lr))) if learn_lr else float(inner_lr)
        # True: each episode's inner loss is divided by κ = (mean support |x|² + 1)/N, a bound on the largest
        # curvature of the support loss in (W, b) at the zero head. A head then steps at inner_lr/κ, and inner_lr
        # bounds rate·curvature while the backbone's features grow; at a fixed rate that product grows with them
        # until the steps diverge (RESULTS.md, "Trained with T=10"). κ is a constant of the step, like a fixed rate:
        # no hypergradient flows through it.
        self.curvature_scaled_rate = curvature_scaled_rate

    def problem(self, features: torch.Tensor, episodes: Episodes):
        """The bilevel problem of one meta-batch as the core's (step, outer_loss, w0, hparams)."""
        batch, n_support, dim = features.shape[0], episodes.support_labels.shape[1], features.shape[2]
        support_labels, query_labels = episodes.support_labels.flatten(), episodes.query_labels.flatten()
        # Each episode's loss weight: (B, 1, 1), or the number 1, which costs the fixed-rate steps nothing.
        scale = self.rate_scale(features[:, :n_support].detach())

        def inner_loss(w, hp):
            # Sum over episodes of each episode's weighted mean loss: every head takes its own episode's step.
            logits = _linear(w, hp["features"][:, :n_support])
            losses = F.cross_entropy(logits.flatten(0, 1), support_labels, reduction="none")
            return (losses.view(batch, n_support, 1) * scale).sum() / n_support

        def inner_gradient(w, hp):
            # ∂/∂logits of that sum is (softmax − one-hot)·scale/K·N; then chain rule.
            support = hp["features"][:, :n_support]
            residual = (torch.softmax(_linear(w, support), -1) - targets) * (scale / n_support)
            return {"W": support.transpose(1, 2) @ residual, "b": residual.sum(1)}

        def outer_loss(w, hp):
            return F.cross_entropy(_linear(w, hp["features"][:, n_support:]).flatten(0, 1), query_labels)

        targets = F.one_hot(episodes.support_labels, self.ways).to(features.dtype)
        learned = isinstance(self.inner_lr, nn.Parameter)
        optimizer = OPTIMIZERS[self.inner](inner_loss, lr="lr" if learned else self.inner_lr, **self.inner_options,
                                           gradient=inner_gradient if self.closed_form else None)
        w0 = optimizer.init({"W": features.new_zeros(batch, dim, self.ways), "b": features.new_zeros(batch, self.ways)})
        hparams = {"features": features, **({"lr": self.inner_lr} if learned else {})}
        return optimizer.step, outer_loss, w0, hparams

    def rate_scale(self, support: torch.Tensor) -> torch.Tensor | float:
        """Each episode's inner-loss weight for support features (B, n, d): 1/κ of shape (B, 1, 1) when the rate is
        scaled by the curvature bound κ = (mean |x|² + 1)/N, else 1. At the zero head the Hessian in (W, b) is the
        second moment of the features with a 1 appended, times the softmax's (I − 11ᵀ/N)/N: its largest eigenvalue
        is at most the moment's trace over N."""
        if not self.curvature_scaled_rate:
            return 1.0
        return self.ways / (support.square().sum(-1, keepdim=True).mean(1, keepdim=True) + 1)

    def hyper_iteration(self, with_metrics: bool):
        loss, accuracy = self.training_step(self.protocol.training_episodes(), with_metrics)
        if not with_metrics:
            return loss, None
        metrics = {"train_acc": 100 * accuracy.mean().item()}
        if isinstance(self.inner_lr, nn.Parameter):
            metrics["inner_lr"] = self.inner_lr.item()
        return loss, metrics

    def generators(self) -> list[torch.Generator]:
        return [self.protocol.sampler.generator]

    def shard(self, rank: int, world: int) -> None:
        self.protocol.shard(rank, world)

    def validate(self) -> dict[str, float]:
        val = self.protocol.evaluate(self, "val", self.protocol.val_episodes)
        return {"val_acc": val["acc"], "val_ci95": val["ci95"]}

    def test(self) -> dict:
        """Test accuracy ± 95% CI over the test episodes, after re-selecting T on meta-validation if asked."""
        p = self.protocol
        p.reselect_T(self)
        test = p.evaluate(self, "test", p.test_episodes)
        return {"test_acc": test["acc"], "test_ci95": test["ci95"], "test_episodes": test["episodes"],
                "test_T": self.T, "ways": p.ways, "shots": p.shots}

    def features(self, episodes: Episodes) -> torch.Tensor:
        dtype = next(self.backbone.parameters()).dtype
        images = episodes.images.to(dtype) / 255
        with torch.autocast(images.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            features = self.backbone(images, episodes.segments)
        return features.to(dtype)

    def training_step(self, episodes: Episodes, with_accuracy: bool = False):
        """Outer loss of a meta-batch; leaves its hypergradient in the .grad of the outer variables.
        Returns (loss, per-episode query accuracy or None); accuracy costs T extra head steps."""
        features = self.features(episodes)
        leaf = features.detach().requires_grad_()
        step, outer_loss, w0, hparams = self.problem(leaf, episodes)
        loss, grads = hypergradient(step, outer_loss, w0, hparams, self.T, self.method, **self.method_options)
        outer = [(features, grads["features"])] + ([(self.inner_lr, grads["lr"])] if "lr" in grads else [])
        torch.autograd.backward(*zip(*outer))
        accuracy = self._accuracy(leaf.detach(), episodes, [self.T])[0] if with_accuracy else None
        return loss, accuracy

    @torch.no_grad()
    def accuracy(self, episodes: Episodes, Ts: list[int]) -> torch.Tensor:
        """Per-episode query accuracy (len(Ts), B) of heads trained by each of Ts inner steps on the support set."""
        return self._accuracy(self.features(episodes), episodes, Ts)

    @torch.no_grad()
    def _accuracy(self, features: torch.Tensor, episodes: Episodes, Ts: list[int]) -> torch.Tensor:
        # One run of max(Ts) steps, read off at each T: re-selecting T costs no extra backbone pass.
        step, _, w, hparams = self.problem(features, episodes)
        query, done, accuracies = features[:, episodes.support_labels.shape[1]:], 0, {}
        for T in sorted(set(Ts)):
            w, done = unroll(step, w, hparams, T, start=done), T
            accuracies[T] = (_linear(w, query).argmax(-1) == episodes.query_labels).float().mean(1)
        return torch.stack([accuracies[T] for T in Ts])


def _linear(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-episode linear classifier: x (B, n, d) @ W (B, d, N) + b (B, N)."""
    return torch.baddbmm(w["b"].unsqueeze(1), x, w["W"])
