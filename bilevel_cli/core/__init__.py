"""The bilevel mathematics: pure functions on dicts of tensors."""

from bilevel_cli.core.hypergradient import (METHODS, forward_hypergradient, forward_step, hypergradient, tangents,
                                            unroll)
from bilevel_cli.core.optimizers import (OPTIMIZERS, InnerOptimizer, InnerStep, MomentumStep, Schedule, adam, gd,
                                        momentum)

__all__ = ["METHODS", "OPTIMIZERS", "InnerOptimizer", "InnerStep", "MomentumStep", "Schedule", "adam",
           "forward_hypergradient", "forward_step", "gd", "hypergradient", "momentum", "tangents", "unroll"]
