"""Bilevel problems, one file each: how a batch becomes the core's (step, outer_loss, w0, hparams), and how a
trained outer state is scored. Every task is a `Task` (base.py), the interface the engine's loop drives."""

from bilevel_cli.tasks.base import Task
from bilevel_cli.tasks.hyper_representation import HyperRepresentation
from bilevel_cli.tasks.joint_training import JointTraining

__all__ = ["HyperRepresentation", "JointTraining", "Task"]
