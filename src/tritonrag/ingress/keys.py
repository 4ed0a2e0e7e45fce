"""API keys: bearer tokens read from a file and/or an environment variable, kept only as SHA-256 hashes and
compared in constant time against every stored hash (no early exit that would tell keys apart).

File format, one key per line (blank lines and ``#`` comments ignored): ``KEY``, ``NAME: KEY``, or
``NAME: sha256:HEX`` for a key stored only as its hash (what `tritonrag ingress-key` writes). The environment
variable holds comma-separated ``KEY`` or ``NAME:KEY`` entries.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

HASH_PREFIX = "sha256:"
KEY_PREFIX = "trag-"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyFileError(ValueError):
    """The keys file cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class KeyStore:
    """The accepted keys' hashes, each with a name for logs and per-key limits (never the key itself)."""

    entries: tuple[tuple[str, bytes], ...] = ()

    @property
    def open(self) -> bool:
        """No key configured: every caller is anonymous."""
        return not self.entries

    def identify(self, presented: str | None) -> str | None:
        """The name of the key ``presented``, or None when it matches none. Every stored hash is compared."""
        if not presented:
            return None
        candidate = digest(presented)
        found = None
        for name, stored in self.entries:
            if hmac.compare_digest(candidate, stored) and found is None:
                found = name
        return found

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, env_value: str | None) -> KeyStore:
        entries: list[tuple[str, bytes]] = []
        if path:
            file = Path(path).expanduser()
            try:
                lines = file.read_text().splitlines()
            except OSError as exc:
                raise KeyFileError(f"cannot read the API keys file {file}: {exc.strerror}; create it with "
                                   "`tritonrag ingress-key --file PATH` or fix [ingress] api_keys_file") from None
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    entries.append(_entry(line, f"{file}:{number}", f"key-{len(entries) + 1}"))
        for item in (env_value or "").split(","):
            if item.strip():
                entries.append(_entry(item.strip(), "the API keys environment variable", f"env-{len(entries) + 1}"))
        return cls(tuple(entries))


def _entry(text: str, where: str, default_name: str) -> tuple[str, bytes]:
    name, sep, value = text.partition(":")
    if sep and not value.startswith("//") and " " not in name.strip() and name.strip() != "sha256":
        name, value = name.strip(), value.strip()
    else:
        name, value = default_name, text
    if value.startswith(HASH_PREFIX):
        hexdigest = value[len(HASH_PREFIX):]
        try:
            stored = bytes.fromhex(hexdigest)
        except ValueError:
            stored = b""
        if len(stored) != 32:
            raise KeyFileError(f"{where}: {HASH_PREFIX} must be followed by 64 hex digits (a SHA-256 hash)")
        return name, stored
    if len(value) < 16:
        raise KeyFileError(f"{where}: API keys must have at least 16 characters; create one with "
                           "`tritonrag ingress-key`")
    return name, digest(value)


def hashed_line(name: str, key: str) -> str:
    """The keys-file line storing ``key`` as its hash only."""
    return f"{name}: {HASH_PREFIX}{hashlib.sha256(key.encode()).hexdigest()}"
