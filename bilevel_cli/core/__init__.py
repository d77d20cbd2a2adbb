"""The bilevel mathematics: pure functions on dicts of tensors."""

from bilevel_cli.core.hypergradient import METHODS, hypergradient, unroll
from bilevel_cli.core.optimizers import OPTIMIZERS, InnerOptimizer, adam, gd, momentum

__all__ = ["METHODS", "OPTIMIZERS", "InnerOptimizer", "adam", "gd", "hypergradient", "momentum", "unroll"]
