"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad manifest, unreadable file, wrong store). Its
message is one line that names the file, field or value and says how to fix it; the CLI prints it and
exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
