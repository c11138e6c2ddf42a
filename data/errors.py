"""The exceptions rnncodec raises for bad input: one line that names the problem and the fix."""

import reprlib
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


class RnncodecError(Exception):
    """Bad input anywhere in rnncodec; the command line prints it as one line and exits with 2."""


class DataError(RnncodecError):
    """Bad data or parameters."""


def shown(value: Any) -> str:
    """A short repr for error messages, bounded in time and length whatever ``value`` holds (a crafted
    file can nest shared lists into a value whose full repr would never finish)."""
    return _REPR.repr(value).replace("\n", " ")[:80]
