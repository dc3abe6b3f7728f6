"""The one exception type for problems a user can fix."""

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
