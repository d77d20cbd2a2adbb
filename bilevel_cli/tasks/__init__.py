"""Bilevel problems: how a batch becomes (step, outer_loss, w0, hparams) and how a trained outer state is evaluated."""

from bilevel_cli.tasks.hyper_representation import HyperRepresentation

__all__ = ["HyperRepresentation"]
