"""Encryption at rest for stored provider keys (BYOK), rotation-ready.

Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under keys from the environment
(``FIELD_ENCRYPTION_KEYS``, newest first). Every ciphertext is stored with the id of the key that
made it: decryption picks that key directly, and ``manage.py rotate_encryption_keys`` finds what
is not yet under the newest key. While a rotation runs, old and new keys both decrypt.

Configured entries are random strings (``openssl rand -hex 32``), not Fernet keys: each is
stretched with HKDF into a Fernet key, so operators never have to produce base64 by hand. A key id
is a short hash of the derived key: stable, and revealing nothing usable about it.

Without ``FIELD_ENCRYPTION_KEYS`` (dev, test) one key is derived from ``SECRET_KEY``; production
settings refuse to start without the variable.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.views.decorators.debug import sensitive_variables

MIN_KEY_CHARS = 32  # a configured key shorter than this is a password, not a key
FERNET_KEY_BYTES = 32
KEY_ID_HEX_CHARS = 12
HKDF_INFO = b"llmwise field encryption v1"
DERIVED_FROM_SECRET_KEY = "derived-from-SECRET_KEY:"  # noqa: S105 - a label, not a secret


class DecryptionFailed(Exception):
    """A stored secret cannot be decrypted: its key is no longer configured, or it was altered."""


@dataclass(frozen=True)
class Sealed:
    """A ciphertext and the id of the key that made it (both stored)."""

    token: str
    key_id: str


@dataclass(frozen=True)
class Keyring:
    """The configured keys, newest first, by id."""

    ids: tuple[str, ...]
    fernets: dict[str, Fernet]

    @property
    def current_id(self) -> str:
        return self.ids[0]

    @property
    def multi(self) -> MultiFernet:
        return MultiFernet([self.fernets[key_id] for key_id in self.ids])


def _derive(material: str) -> bytes:
    raw = HKDF(algorithm=hashes.SHA256(), length=FERNET_KEY_BYTES, salt=None, info=HKDF_INFO)
    return base64.urlsafe_b64encode(raw.derive(material.encode()))


def _key_id(fernet_key: bytes) -> str:
    return hashlib.sha256(b"llmwise key id:" + fernet_key).hexdigest()[:KEY_ID_HEX_CHARS]


@sensitive_variables("configured", "secret_key", "materials", "material", "fernet_key")
@lru_cache(maxsize=8)
def _keyring(configured: tuple[str, ...], secret_key: str) -> Keyring:
    materials = [item.strip() for item in configured if item.strip()]
    for material in materials:
        if len(material) < MIN_KEY_CHARS:
            raise ImproperlyConfigured(
                f"Each FIELD_ENCRYPTION_KEYS entry needs at least {MIN_KEY_CHARS} characters "
                "(generate one with `openssl rand -hex 32`)."
            )
    if not materials:
        if not secret_key:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS or SECRET_KEY must be set.")
        materials = [DERIVED_FROM_SECRET_KEY + secret_key]
    ids: list[str] = []
    fernets: dict[str, Fernet] = {}
    for material in materials:
        fernet_key = _derive(material)
        key_id = _key_id(fernet_key)
        if key_id in fernets:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS lists the same key twice.")
        ids.append(key_id)
        fernets[key_id] = Fernet(fernet_key)
    return Keyring(ids=tuple(ids), fernets=fernets)


def keyring() -> Keyring:
    """The keys as currently configured (cached per configuration, so settings overrides apply)."""
    return _keyring(tuple(settings.FIELD_ENCRYPTION_KEYS), settings.SECRET_KEY)


def current_key_id() -> str:
    """The id of the key new secrets are encrypted with."""
    return keyring().current_id


@sensitive_variables("plaintext")
def encrypt(plaintext: str) -> Sealed:
    """Encrypt ``plaintext`` under the newest key."""
    ring = keyring()
    token = ring.fernets[ring.current_id].encrypt(plaintext.encode())
    return Sealed(token=token.decode("ascii"), key_id=ring.current_id)


def decrypt(*, token: str, key_id: str) -> str:
    """The plaintext of a stored secret; :class:`DecryptionFailed` when no configured key opens it.

    The recorded key id picks the key; a row whose id is unknown (say, written with an id scheme
    we no longer use) is still tried against every configured key before giving up.
    """
    ring = keyring()
    fernet = ring.fernets.get(key_id)
    try:
        if fernet is not None:
            return fernet.decrypt(token.encode("ascii")).decode()
        return ring.multi.decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as exc:
        raise DecryptionFailed(
            f"no configured encryption key opens this secret (key id {key_id!r})"
        ) from exc


def reencrypt(*, token: str, key_id: str) -> Sealed:
    """The same secret under the newest key (unchanged when it already is)."""
    ring = keyring()
    if key_id == ring.current_id:
        return Sealed(token=token, key_id=key_id)
    return encrypt(decrypt(token=token, key_id=key_id))
