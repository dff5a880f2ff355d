"""Keys for the tests: the `encryption` section of an age identity, the `signing` section of a new key pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyrage import x25519

from common.signing import new_signing_key


def encryption(identity: x25519.Identity, identity_file: Path | None = None) -> dict[str, Any]:
    """The `encryption` section that encrypts to `identity`, and opens with `identity_file` if given."""
    section: dict[str, Any] = {"recipients": [str(identity.to_public())]}
    if identity_file is not None:
        section["identity-file"] = str(identity_file)
    return section


def signing(directory: Path, name: str = "signing.key") -> dict[str, Any]:
    """The `signing` section of a new key pair whose private key is written (0600) into `directory`."""
    private, verify_key = new_signing_key()
    path = directory / name
    path.write_text(private + "\n")
    path.chmod(0o600)
    return {"key-file": str(path), "verify-key": str(verify_key)}
