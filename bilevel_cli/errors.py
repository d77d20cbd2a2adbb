"""The one exception type for mistakes in the user's input."""


class UserError(ValueError):
    """A mistake in the user's input (config, data, paths): reported as one line naming the fix, exit code 2."""
