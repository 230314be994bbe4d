"""WireGuard Curve25519 keys: parsing, generation, derivation and key files."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base
from nacl.utils import random as nacl_random

from wgkube.domain.errors import InvalidKey, KeyFileError

KEY_LEN = 32


def _decode(text: str, what: str) -> bytes:
    text = text.strip()
    if not text:
        raise InvalidKey(f"{what} is empty")
    if len(text) != 44 or not text.endswith("="):
        raise InvalidKey(
            f"{what} must be 44 characters of base64 ending in '=' (32 bytes), got {len(text)}"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey(f"{what} is not valid base64: {exc}") from exc
    if len(raw) != KEY_LEN:  # 44 characters ending in '==' are 31 bytes
        raise InvalidKey(f"{what} decodes to {len(raw)} bytes, expected {KEY_LEN}")
    if base64.b64encode(raw).decode() != text:
        # Unused low bits set in the last character: `wg` refuses such a key, and two
        # spellings of one key would make annotations that differ but mean the same.
        raise InvalidKey(f"{what} is not canonical base64 (unused bits set in the last character)")
    return raw


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A WireGuard public key; hashable, ordered, shown as base64."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise InvalidKey(f"public key must be {KEY_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        return cls(_decode(text, "public key"))

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def short(self) -> str:
        return self.b64[:8] + "…"

    def __str__(self) -> str:
        return self.b64

    def __repr__(self) -> str:
        return f"PublicKey({self.b64!r})"

    def __lt__(self, other: PublicKey) -> bool:
        return self.raw < other.raw


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A WireGuard private key; its repr and str never show the secret."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise InvalidKey(f"private key must be {KEY_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> PrivateKey:
        return cls(_decode(text, "private key"))

    @classmethod
    def generate(cls) -> PrivateKey:
        raw = bytearray(nacl_random(KEY_LEN))
        # Clamp as `wg genkey` does, so the kernel reports back the same bytes.
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        return cls(bytes(raw))

    def clamped(self) -> PrivateKey:
        raw = bytearray(self.raw)
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        return PrivateKey(bytes(raw))

    def public_key(self) -> PublicKey:
        return PublicKey(crypto_scalarmult_base(self.clamped().raw))

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def __str__(self) -> str:
        return "<private key redacted>"

    def __repr__(self) -> str:
        return f"PrivateKey(<redacted>, public={self.public_key().b64!r})"


def load_private_key(path: Path, *, create: bool) -> tuple[PrivateKey, bool]:
    """Load the key at `path`; when it is missing and `create` is set, generate one.

    Returns the key and whether it was created. A file that exists but cannot be
    read or parsed raises `KeyFileError`: an identity is never silently replaced.
    The new file is written atomically (temporary file, fsync, rename) with mode 0600.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"private key file {path} does not exist") from None
        key = PrivateKey.generate()
        write_private_key(path, key)
        return key, True
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"private key file {path} cannot be read: {exc}") from exc
    try:
        return PrivateKey.parse(text), False
    except InvalidKey as exc:
        raise KeyFileError(f"private key file {path} is malformed: {exc}") from exc


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write `key` to `path` atomically with mode 0600, creating the directory (0700)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".wgkey-", dir=path.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot create private key file {path}: {exc}") from exc
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.b64 + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyFileError(f"cannot write private key file {path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PresharedKey:
    """An optional WireGuard symmetric key; all zeros means "none" to the kernel."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise InvalidKey(f"preshared key must be {KEY_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> PresharedKey:
        return cls(_decode(text, "preshared key"))

    @classmethod
    def zero(cls) -> PresharedKey:
        return cls(bytes(KEY_LEN))

    @property
    def is_zero(self) -> bool:
        return self.raw == bytes(KEY_LEN)

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def __str__(self) -> str:
        return "<preshared key redacted>"

    def __repr__(self) -> str:
        return "PresharedKey(<redacted>)"
