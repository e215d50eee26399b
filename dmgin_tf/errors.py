"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class DmginError(Exception):
    """An error caused by input, data or configuration; the message names the problem."""


class DataError(DmginError):
    """Malformed or inconsistent input data (names the file/field and value)."""
