"""The one exception type for problems a user can fix (bad input, missing files).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class FdbenchError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""
