"""The one exception type the data package raises for bad input."""


class DataError(Exception):
    """Bad data or parameters: a one-line message that names the problem and the fix."""
