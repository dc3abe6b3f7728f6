"""The one exception type for problems a user can fix, and how a foreign
exception is quoted in one."""

from __future__ import annotations


class CrossGetError(Exception):
    """Bad input or an unsupported model: a message naming the problem and a hint
    naming the fix. The CLI prints ``error: <message> (<hint>)`` and exits 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when empty):
    what one-line errors quote of a library's multi-line message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
