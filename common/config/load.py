"""Read the config file strictly: a bounded regular file of UTF-8 YAML, refusing what YAML would take
silently or crash on; then validate it (common.config.validate), and refuse it if it holds a secret that
others can read (common.config.secret_files)."""

from __future__ import annotations

import io
import os
from typing import Any

import yaml

from common.config.errors import ConfigError
from common.config.files import read_named_file
from common.config.schema import Config
from common.config.secret_files import check_config_file
from common.config.validate import parse_config

MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 20
"""YAML nesting the file may have; the config itself needs 4 (etcd: endpoints: - URL)."""
MAX_NUMBER_CHARACTERS = 30
"""Beyond it a number is past every bound (and past 4,300 digits Python will not even read it)."""


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None,
                etcd_credentials: bool = True) -> Config:
    """Read the YAML file at `path`; raise ConfigError naming the first bad key. Without `etcd_credentials`,
    etcd's password and TLS files are neither read nor kept (common.config.validate.parse_config)."""
    text, status = _read_config_file(path)
    try:
        # A named stream: YAML's errors then say which file (a str would be "<unicode string>").
        loader = _StrictLoader(_NamedText(text, str(path)))
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {_one_line(exc)}") from None
    config = parse_config(raw, os.environ if environ is None else environ, etcd_credentials)
    check_config_file(path, status, raw)  # the file as it was read (its fstat)
    return config


def _read_config_file(path: str | os.PathLike[str]) -> tuple[str, os.stat_result]:
    """The file's text, and its status when it was read."""
    data, status = read_named_file("config", path, MAX_CONFIG_BYTES)
    try:
        return data.decode("utf-8"), status
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("config", f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}") from None


class _NamedText(io.StringIO):
    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


class _StrictLoader(yaml.SafeLoader):
    """safe_load, refusing what it would take silently or crash on: duplicate keys (it keeps the last),
    deep nesting (RecursionError), NUL in a string (paths and secrets cannot hold one), numbers too long
    to read. It checks each node as it is composed, where the key path is known."""

    def __init__(self, stream: _NamedText) -> None:
        super().__init__(stream)
        self._keys: list[str] = []
        self._depth = 0

    def _where(self, *more: str) -> str:
        return ".".join([*self._keys, *more][:2]) or "config"  # the config's keys are two deep at most

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_NESTING:
            line = self.get_mark().line + 1  # where the reader is: at the too-deep node or just past it
            raise ConfigError(self._where(), f"nested more than {MAX_NESTING} levels deep (line {line}); "
                                             "no setting nests like that")
        # A mapping's value is composed with its key node as `index`; a key and a list item are not.
        key = index.value if isinstance(index, yaml.ScalarNode) else None
        if key is not None:
            self._keys.append(str(key))
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
            is_key = isinstance(parent, yaml.MappingNode) and index is None
            if isinstance(node, yaml.ScalarNode):
                self._check_scalar(node, self._where(node.value) if is_key else self._where())
            elif isinstance(node, yaml.MappingNode):
                self._check_keys(node)
        finally:
            self._depth -= 1
            if key is not None:
                self._keys.pop()
        return node

    def _check_scalar(self, node: yaml.ScalarNode, where: str) -> None:
        if "\0" in node.value:
            raise ConfigError(where, f"contains a NUL character (line {node.start_mark.line + 1})")
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_NUMBER_CHARACTERS:
            raise ConfigError(where, f"a number of {len(node.value)} digits, beyond every bound")

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                first = seen.get((key.tag, key.value))
                if first is not None:
                    raise ConfigError(self._where(key.value), f"duplicate key (lines {first} and {line}): "
                                                              "YAML would silently keep the last")
                seen[key.tag, key.value] = line


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
