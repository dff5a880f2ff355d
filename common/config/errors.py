"""The one error a bad config raises: one line that names the key."""

from __future__ import annotations


class ConfigError(Exception):
    """A config value is missing or wrong; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        # One line whatever a key or a path holds (a newline, a NUL): the message is one stderr line.
        key = printable(key)
        super().__init__(f"{key}: {printable(problem)}")
        self.key = key


def printable(text: str) -> str:
    """`text` with its control characters escaped, as Python writes them in a string literal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
