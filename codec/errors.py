"""The one exception type the codec raises for bad input."""


class CodecError(Exception):
    """Bad input to the codec: a one-line message that names the problem and the fix."""
