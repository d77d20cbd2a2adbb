"""bilevel: gradient-based bilevel programming for hyperparameter optimization and meta-learning."""

from bilevel_cli.core import hypergradient

__all__ = ["hypergradient"]
__version__ = "0.1.0"
