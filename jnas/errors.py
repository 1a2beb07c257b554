"""The one exception type jnas raises for bad input, so scripts can print it without a traceback."""


class JnasError(ValueError):
    """Bad input or state, with a message that names the problem and the fix."""
