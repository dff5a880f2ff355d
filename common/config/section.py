"""The generic validator: one YAML mapping, its keys read by type, each mistake a ConfigError naming
the key. It knows no setting of the service's (common.config.validate gives the rules)."""

from __future__ import annotations

import os
from typing import Any

from common.config.durations import format_duration, parse_duration
from common.config.errors import ConfigError
from common.config.files import MAX_KEY_FILE, read_named_file
from common.config.schema import split_listen


class Section:
    """One YAML mapping being validated; remembers which keys were read."""

    def __init__(self, raw: Any, prefix: str, known: frozenset[str]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            where = prefix.rstrip(".") or "config"
            raise ConfigError(where, f"expected a mapping, got {_type_name(raw)}")
        # Unknown keys are refused before anything is acted on: a typo must not pass silently.
        for key in raw:
            if key not in known:
                raise ConfigError(prefix + str(key), "unknown key")
        self._raw: dict[Any, Any] = raw
        self._prefix = prefix

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _value(self, key: str) -> Any:
        return self._raw.get(key)

    def get_section(self, key: str) -> Any:
        """The raw value of an optional sub-section (validated by its own Section), or None."""
        return self._value(key)

    def require(self, key: str) -> Any:
        if key not in self._raw:
            raise ConfigError(self._key(key), "is required")
        return self._value(key)

    def _get_typed(self, key: str, default: Any, kind: type, expected: str) -> Any:
        value = self._value(key)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise ConfigError(self._key(key), f"expected {expected}, got {_type_name(value)}")
        return value

    def get_str(self, key: str, default: str | None) -> Any:
        return self._get_typed(key, default, str, "a string")

    def get_int(self, key: str, default: int, minimum: int, maximum: int | None = None, note: str = "") -> int:
        value = self._value(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self._key(key), f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            limits = f"at least {minimum}" if value < minimum else f"at most {maximum}" + (f" ({note})" if note else "")
            raise ConfigError(self._key(key), f"must be {limits}, got {value}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        return bool(self._get_typed(key, default, bool, "true or false"))

    def get_duration(self, key: str, default: str, bounds: tuple[float, float], note: str = "") -> float:
        text = self.get_str(key, default)
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(self._key(key), str(exc)) from None
        shown = repr(text) if len(text) <= 40 else f"a {len(text)}-character duration"
        if seconds <= 0:
            raise ConfigError(self._key(key), f"must be longer than zero, got {shown}")
        minimum, maximum = bounds
        if seconds < minimum:
            raise ConfigError(self._key(key), f"must be at least {format_duration(minimum)}, got {shown}")
        if seconds > maximum:  # also infinity: float() makes it of 400 digits
            limit = format_duration(maximum) + (f" ({note})" if note else "")
            raise ConfigError(self._key(key), f"must be at most {limit}, got {shown}")
        return seconds

    def get_listen(self, key: str, default: str) -> str:
        text: str = self.get_str(key, default)
        try:
            split_listen(text)
        except ValueError as exc:
            raise ConfigError(self._key(key), str(exc)) from None
        return text

    def get_str_list(self, key: str, default: tuple[str, ...]) -> list[str]:
        value = self._value(key)
        if value is None:
            return list(default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(self._key(key), "expected a non-empty list of strings")
        return value

    def get_pem(self, name: str) -> tuple[bytes | None, str | None]:
        """Read `name` (inline PEM, or a path) or `name-file` (a path); at most one of them.
        Return the PEM and the file it came from (None: inline)."""
        inline, file_key = self.get_str(name, None), f"{name}-file"
        path = self.get_str(file_key, None)
        if inline is not None and path is not None:
            raise ConfigError(self._key(name), f"give either {name} or {file_key}, not both")
        if inline is not None and inline.lstrip().startswith("-----BEGIN"):
            return str(inline).encode(), None
        source, key = (inline, name) if inline is not None else (path, file_key)
        if source is None:
            return None, None
        pem, _ = read_named_file(self._key(key), source, MAX_KEY_FILE)
        return pem, os.path.abspath(source)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)
