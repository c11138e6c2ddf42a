"""The one exception type the codec raises for bad input."""

from rnncodec.data.errors import RnncodecError


class CodecError(RnncodecError):
    """Bad input to the codec: a one-line message that names the problem and the fix."""
