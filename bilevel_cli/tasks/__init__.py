"""Bilevel problems: how a batch becomes (step, outer_loss, w0, hparams) and how a trained outer state is evaluated.

Every task has `training_step(episodes, with_accuracy) -> (loss, accuracy)`, which leaves the gradient of the
outer variables in their .grad, and `accuracy(episodes)`, the per-episode test accuracy."""

from bilevel_cli.tasks.hyper_representation import HyperRepresentation
from bilevel_cli.tasks.joint_training import JointTraining

TASKS = ("hyper_representation", "joint_training")

__all__ = ["TASKS", "HyperRepresentation", "JointTraining"]
