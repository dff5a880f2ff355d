"""age keys for the tests of encrypted backups: the `encryption` config section of an identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyrage import x25519


def encryption(identity: x25519.Identity, identity_file: Path | None = None) -> dict[str, Any]:
    """The `encryption` section that encrypts to `identity`, and opens with `identity_file` if given."""
    section: dict[str, Any] = {"recipients": [str(identity.to_public())]}
    if identity_file is not None:
        section["identity-file"] = str(identity_file)
    return section
