"""The one exception type for mistakes a user can cause."""


class PmlError(Exception):
    """A user-fixable problem: bad path, bad CSV, corrupt image, unknown arch, missing weights.

    The message names the offending file, row or value. The CLI prints it on one line
    (no traceback) and exits non-zero.
    """
