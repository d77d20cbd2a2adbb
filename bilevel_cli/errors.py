"""The one exception type for mistakes in the user's input."""


class UserError(ValueError):
    """A mistake in the user's input (config, data, paths): reported as one line naming the fix, exit code 2."""


class Interrupted(Exception):
    """The run stopped on a signal after writing its checkpoint; the message says how to continue it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for a process ended by a signal
