"""Token signing keys: Ed25519; the gateway holds the private key, every service the public ones.

- The private key is a PKCS#8 PEM file (``CRM_JWT_PRIVATE_KEY_FILE``), given to the
  gateway only: it is the one process that can mint tokens.
- The public keys are a JWKS document (``CRM_JWT_PUBLIC_KEYS_FILE``, RFC 7517) holding
  one or more Ed25519 keys. Every service verifies with it, read from a file so a
  service starts and verifies while the gateway is down. Several keys make rotation
  possible: a token's ``kid`` header names the key that signed it.
- A key's id (``kid``) is its RFC 7638 thumbprint, so it is never configured and
  cannot disagree with the key.

Development keys are generated once per install under ``.local/keys`` (git-ignored)
by :func:`ensure_dev_keys`; nothing here has a known default key.
``python -m crm_platform.keys new PRIVATE.pem JWKS.json`` makes a production key pair
(or adds a new key to an existing JWKS, for rotation).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_NAME = "jwt-signing-key.pem"
PUBLIC_KEYS_NAME = "jwt-public-keys.json"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(public: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256) of an Ed25519 public key: its ``kid``."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_raw(public))}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(_raw(public)),
        "kid": thumbprint(public),
        "alg": "EdDSA",
        "use": "sig",
    }


def jwks(keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    return {"keys": [public_jwk(k) for k in keys.values()]}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


def load_private_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return SigningKey(thumbprint(key.public_key()), key)


def parse_jwks(doc: Any, source: str = "JWKS") -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document by kid (the kid is recomputed, never trusted)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyFileError(f"{source}: not a JWKS document (an object with a 'keys' list)")
    out: dict[str, Ed25519PublicKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise KeyFileError(f"{source}: only Ed25519 (kty OKP) keys are accepted")
        try:
            key = Ed25519PublicKey.from_public_bytes(_b64url_decode(str(jwk.get("x", ""))))
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: invalid Ed25519 key: {exc}") from None
        kid = thumbprint(key)
        if jwk.get("kid") not in (None, kid):
            raise KeyFileError(f"{source}: kid {jwk.get('kid')!r} is not the key's thumbprint {kid!r}")
        out[kid] = key
    if not out:
        raise KeyFileError(f"{source}: no keys")
    return out


def load_public_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the public keys {path}: {exc}") from None
    return parse_jwks(doc, str(path))


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class KeyFiles:
    private: Path
    public: Path


def dev_keys_dir() -> Path:
    """``CRM_DEV_KEYS_DIR``, else ``.local/keys`` of the checkout around the working directory."""
    explicit = os.environ.get("CRM_DEV_KEYS_DIR")
    if explicit:
        return Path(explicit).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "uv.lock").exists() and (candidate / "shared").is_dir():
            return candidate / ".local" / "keys"
    return here / ".local" / "keys"


def ensure_dev_keys(directory: Path | None = None) -> KeyFiles:
    """This install's development key pair, generated on first use (never a known key).

    Processes starting at once race safely: the pair is made in a private temporary
    folder and renamed into place; the loser uses the winner's pair.
    """
    target = directory or dev_keys_dir()
    files = KeyFiles(target / PRIVATE_KEY_NAME, target / PUBLIC_KEYS_NAME)
    if files.private.exists() and files.public.exists():
        return files
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=target.parent))
    key = Ed25519PrivateKey.generate()
    _write(staging / PRIVATE_KEY_NAME, private_pem(key), 0o600)
    _write(staging / PUBLIC_KEYS_NAME, json.dumps(jwks({"": key.public_key()}), indent=2).encode(), 0o644)
    try:
        staging.rename(target)
    except OSError:  # another process won (or an old, partial folder is there)
        for name in (PRIVATE_KEY_NAME, PUBLIC_KEYS_NAME):
            (staging / name).unlink(missing_ok=True)
        staging.rmdir()
        if not (files.private.exists() and files.public.exists()):
            raise KeyFileError(f"{target} exists but holds no key pair; remove it to regenerate") from None
    return files


def new_key(private_path: Path, jwks_path: Path) -> str:
    """Write a new private key and add its public key to ``jwks_path`` (created if absent)."""
    key = Ed25519PrivateKey.generate()
    _write(private_path, private_pem(key), 0o600)
    keys = load_public_keys(jwks_path) if jwks_path.exists() else {}
    keys[thumbprint(key.public_key())] = key.public_key()
    jwks_path.write_text(json.dumps(jwks(keys), indent=2) + "\n")
    return thumbprint(key.public_key())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "new":
        print("usage: python -m crm_platform.keys new PRIVATE_KEY.pem PUBLIC_KEYS.json", file=sys.stderr)
        return 2
    kid = new_key(Path(args[1]), Path(args[2]))
    print(f"new signing key {kid}: private key in {args[1]} (gateway only), public key added to {args[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
