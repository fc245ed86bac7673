"""Keyed tokens for exported identifiers, and the keys that make and vouch for them.

An exported list never carries a raw identifier. Each ``(entity_type,
entity_id)`` becomes ``HMAC-SHA256(key, "<entity_type>:<entity_id>")`` as 64
hex characters. The entity type is part of the message so the same string used
as, say, an account id and a merchant id gives two unrelated tokens. A scorer
that holds the key tokenises its own ids the same way and looks them up; anyone
without the key learns nothing from a token (PCI DSS 3.5.1.1 asks for keyed
hashes of card data).

Secrets come from the environment only (never code or YAML):

- ``RINGFENCE_HMAC_KEY``: the tokenisation key. An even-length hex string of at
  least 32 hex digits is decoded to bytes; anything else is used as UTF-8 text.
  At least 16 bytes either way.
- ``RINGFENCE_SIGNING_KEY``: the Ed25519 private key that signs export
  manifests: 64 hex digits (the 32 raw private bytes), an inline PEM, or a path
  to a PEM file (PKCS#8, unencrypted).
- ``RINGFENCE_VERIFY_KEY``: the matching Ed25519 public key (64 hex digits of
  the raw public bytes, inline PEM or a PEM path). Verification uses this key,
  never one found inside the export: a manifest must not vouch for itself.

``scripts/dev_keys.sh`` writes fresh development keys to ``.secrets/dev.env``.
"""

# No `from __future__ import annotations`: pandas_udf reads the inner function's
# type hints, which must be real objects (pandas is imported lazily).
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

from graph.errors import RingfenceError

HMAC_KEY_ENV = "RINGFENCE_HMAC_KEY"
SIGNING_KEY_ENV = "RINGFENCE_SIGNING_KEY"
VERIFY_KEY_ENV = "RINGFENCE_VERIFY_KEY"
REDIS_PASSWORD_ENV = "RINGFENCE_REDIS_PASSWORD"

TOKEN_ALGORITHM = "HMAC-SHA256"
TOKEN_MESSAGE = "<entity_type>:<entity_id> (UTF-8)"
MIN_HMAC_KEY_BYTES = 16
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _env_value(name: str, env: Mapping[str, str] | None) -> str:
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        raise RingfenceError(
            f"secret {name} is not set: export it in the environment "
            "(for development: `bash scripts/dev_keys.sh && source .secrets/dev.env`)"
        )
    return value


def _is_hex(s: str, length: int | None = None) -> bool:
    return bool(_HEX.match(s)) and len(s) % 2 == 0 and (length is None or len(s) == length)


def load_hmac_key(env: Mapping[str, str] | None = None) -> bytes:
    """The tokenisation key from ``RINGFENCE_HMAC_KEY`` (hex if it looks like hex, else text)."""
    raw = _env_value(HMAC_KEY_ENV, env)
    key = bytes.fromhex(raw) if _is_hex(raw) and len(raw) >= 32 else raw.encode("utf-8")
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise RingfenceError(f"secret {HMAC_KEY_ENV} is too short: at least {MIN_HMAC_KEY_BYTES} bytes")
    return key


def token_bytes(key: bytes, entity_type: str, entity_id: str) -> bytes:
    """The 32-byte HMAC-SHA256 token of one identifier."""
    return hmac.digest(key, f"{entity_type}:{entity_id}".encode(), "sha256")


def token_hex(key: bytes, entity_type: str, entity_id: str) -> str:
    """The token as exported: 64 lower-case hex characters."""
    return token_bytes(key, entity_type, entity_id).hex()


def key_id(key: bytes) -> str:
    """A public fingerprint of a key (for 'is this the same key?' checks; reveals nothing)."""
    return hmac.digest(key, b"ringfence-key-id", "sha256").hex()[:16]


def tokenize_column(entity_type_col, entity_id_col, key: bytes):
    """A Spark Column of hex tokens, computed on the executors.

    A pandas UDF rather than Spark SQL ``sha2`` over ``key XOR ipad``: SQL
    would put key material into the query plan as a literal, visible in the
    Spark UI and event logs. The UDF closure ships the key to the executors
    without printing it anywhere.
    """
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def _tokens(types: pd.Series, ids: pd.Series) -> pd.Series:
        return pd.Series(
            [hmac.digest(key, f"{t}:{i}".encode(), "sha256").hex() for t, i in zip(types, ids, strict=True)],
            index=types.index,
        )

    return _tokens(entity_type_col, entity_id_col)


# --- Ed25519 signing -----------------------------------------------------------


def _pem_bytes(value: str, name: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    if not path.is_file():
        raise RingfenceError(f"secret {name}: neither 64 hex digits, inline PEM, nor a readable PEM file")
    return path.read_bytes()


def load_signing_key(env: Mapping[str, str] | None = None):
    """The Ed25519 private key from ``RINGFENCE_SIGNING_KEY`` (hex, inline PEM or PEM path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = _env_value(SIGNING_KEY_ENV, env)
    try:
        if _is_hex(raw, 64):
            return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(raw))
        key = serialization.load_pem_private_key(_pem_bytes(raw, SIGNING_KEY_ENV), password=None)
    except (ValueError, TypeError) as e:
        raise RingfenceError(f"secret {SIGNING_KEY_ENV} is not a usable Ed25519 private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RingfenceError(f"secret {SIGNING_KEY_ENV} is not an Ed25519 key")
    return key


def load_verify_key(env: Mapping[str, str] | None = None):
    """The Ed25519 public key from ``RINGFENCE_VERIFY_KEY`` (hex, inline PEM or PEM path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = _env_value(VERIFY_KEY_ENV, env)
    try:
        if _is_hex(raw, 64):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw))
        key = serialization.load_pem_public_key(_pem_bytes(raw, VERIFY_KEY_ENV))
    except (ValueError, TypeError) as e:
        raise RingfenceError(f"secret {VERIFY_KEY_ENV} is not a usable Ed25519 public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RingfenceError(f"secret {VERIFY_KEY_ENV} is not an Ed25519 key")
    return key


def public_key_id(public_key) -> str:
    """A short fingerprint of an Ed25519 public key (names the signer in manifests)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key, payload: bytes) -> str:
    """Hex Ed25519 signature of ``payload``."""
    return private_key.sign(payload).hex()


def signature_valid(public_key, payload: bytes, signature_hex: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes.fromhex(signature_hex.strip()), payload)
        return True
    except (InvalidSignature, ValueError):
        return False
