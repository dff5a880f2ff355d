"""What every command of the tree has: its summary line in `etcd-backup --help`, its own --help with a
description, examples and the exit statuses, and the options it reads (cli.main builds the tree)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from common.startup import CONFIG_ENV, DEFAULT_CONFIG_PATH

# A string: argparse's class is generic to type checkers only.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `ArgumentParser.add_subparsers` returns: add_command adds a command to it."""

EXIT_STATUSES = """\
exit status:
  0  done; for a check (status, verify): all is well
  1  a check failed: the newest backup is older than --max-age, the recovery point than
     --max-recovery-age (or there is none), a backup is bad, the service refused or could not be
     reached
  2  a usage error, or a config that cannot be used (one line names the key)
  3  verify, restore, download --verify: no verdict, the check could not be done here"""


def add_command(commands: Commands, name: str, run: Callable[[argparse.Namespace], None] | None, summary: str,
                description: str, examples: list[str], config_option: bool = True,
                parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """Add command `name`: `summary` is its line in its parent's --help; its own --help adds `description`,
    `examples` and the exit statuses."""
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples) + "\n\n" + EXIT_STATUSES
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=parents or [])
    if config_option:
        add_config_option(parser)
    parser.set_defaults(run=run)
    return parser


def add_config_option(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"YAML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH}){help_suffix}")
