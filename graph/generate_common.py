"""Building blocks of the synthetic world generator: seeded streams, id text, Arrow columns.

Everything here is vectorised: ids, IPv4 text and decimal amounts are built
for millions of rows at once from integer codes, never row by row in Python.

Identifier text is designed so that no identifier can be mistaken for a card
number (PAN): every id carries at most 12 decimal digits in total, so even a
detector that strips all separators never sees a 13-19 digit string.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000
SECOND_US = 1_000_000

# Event-time columns held as int64 microseconds; null codes are -1.
NULL = -1
# Device/IP of a planted event still to be drawn from its account (filled in one vectorised pass).
PICK_LATER = -2

PAYMENT_COLS = ("t", "acc", "card", "merch", "amt", "cur", "dec", "dev", "ip")
TRANSFER_COLS = ("t", "src", "dst", "amt", "cur", "dec", "dev", "ip")
SESSION_COLS = ("t", "acc", "etype", "dev", "ip", "cv")
EVENT_COLS = {"payments": PAYMENT_COLS, "transfers": TRANSFER_COLS, "sessions": SESSION_COLS}

CURRENCIES = ("KRW", "USD", "JPY", "EUR")
KRW, USD, JPY, EUR = range(4)
# Minor units per KRW, for converting a KRW-denominated price (rounded to cents).
KRW_PER_UNIT = {KRW: 1.0, USD: 1380.0, JPY: 9.2, EUR: 1490.0}

SESSION_TYPES = ("signup", "login", "password_reset", "app_open")
SIGNUP, LOGIN, PASSWORD_RESET, APP_OPEN = range(4)

_DTYPES = {"t": np.int64, "acc": np.int64, "src": np.int64, "dst": np.int64, "card": np.int64,
           "merch": np.int64, "amt": np.int64, "cur": np.int8, "dec": np.bool_, "dev": np.int64,
           "ip": np.int64, "etype": np.int8, "cv": np.float64}


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, keys): the same stream whatever order the parts run in."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])


def empty_columns(table: str) -> dict[str, np.ndarray]:
    return {c: np.empty(0, dtype=_DTYPES[c]) for c in EVENT_COLS[table]}


def concat_columns(table: str, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["t"])]
    if not parts:
        return empty_columns(table)
    return {c: np.concatenate([p[c] for p in parts]).astype(_DTYPES[c], copy=False) for c in EVENT_COLS[table]}


def take_rows(cols: dict[str, np.ndarray], idx: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in cols.items()}


class RowSink:
    """Collects planted events column-wise; each add() takes scalars or equal-length arrays."""

    def __init__(self, table: str):
        self.table = table
        self._parts: list[dict[str, np.ndarray]] = []

    def add(self, **cols) -> None:
        sizes = [np.size(v) for v in cols.values() if np.ndim(v) > 0]
        n = max(sizes) if sizes else 1
        if n == 0 or 0 in sizes:
            return
        part = {}
        for c in EVENT_COLS[self.table]:
            v = cols[c]
            if np.ndim(v) == 0 or np.size(v) != n:
                part[c] = np.full(n, np.asarray(v).ravel()[0], dtype=_DTYPES[c])
            else:
                part[c] = np.asarray(v, dtype=_DTYPES[c])
        self._parts.append(part)

    def columns(self) -> dict[str, np.ndarray]:
        if len(self._parts) > 1:
            self._parts = [concat_columns(self.table, self._parts)]
        return self._parts[0] if self._parts else empty_columns(self.table)

    def replace(self, cols: dict[str, np.ndarray]) -> None:
        self._parts = [cols]


# --- identifier text ---------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_MASK48 = np.uint64((1 << 48) - 1)


def mix48(values: np.ndarray, salt: int) -> np.ndarray:
    """A bijection on 48-bit integers: distinct inputs give distinct, random-looking outputs."""
    x = (values.astype(np.uint64) ^ np.uint64(salt & ((1 << 48) - 1))) & _MASK48
    with np.errstate(over="ignore"):
        x = (x * np.uint64(0x9E3779B97F4B)) & _MASK48  # odd multiplier: invertible mod 2^48
        x ^= x >> np.uint64(23)
        x = (x * np.uint64(0xC2B2AE3D27D5)) & _MASK48
        x ^= x >> np.uint64(19)
    return x


def _fixed_width_strings(buf: np.ndarray) -> pa.Array:
    """Arrow string array from an (n, width) uint8 matrix of ASCII."""
    n, width = buf.shape
    offsets = (np.arange(n + 1, dtype=np.int64) * width)
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)),
                                           pa.py_buffer(np.ascontiguousarray(buf)))
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(buf))
                                            ).cast(pa.string())


def hex_ids(prefix: str, values: np.ndarray, salt: int, letters_at: tuple[int, ...] = ()) -> pa.Array:
    """``prefix`` + 12 hex digits of mix48(value), plus a hex letter (a-f) inserted at each
    position of ``letters_at`` so long digit runs cannot occur. Distinct values, distinct ids."""
    x = mix48(np.asarray(values), salt)
    n = len(x)
    p = np.frombuffer(prefix.encode(), dtype=np.uint8)
    body = np.empty((n, 12), dtype=np.uint8)
    for i in range(12):
        body[:, 11 - i] = _HEX[((x >> np.uint64(4 * i)) & np.uint64(15)).astype(np.intp)]
    cols = [np.broadcast_to(p, (n, len(p)))]
    start = 0
    letter_src = (x * np.uint64(7)) >> np.uint64(8)
    for k, pos in enumerate(sorted(letters_at)):
        cols.append(body[:, start:pos])
        letter = (ord("a") + ((letter_src >> np.uint64(3 * k)) % np.uint64(6))).astype(np.uint8)
        cols.append(letter[:, None])
        start = pos
    cols.append(body[:, start:])
    return _fixed_width_strings(np.concatenate(cols, axis=1))


def digit_ids(prefix: str, values: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded decimal ``values`` (width <= 12 keeps ids PAN-proof)."""
    assert width <= 12
    v = np.asarray(values, dtype=np.int64)
    if len(v) and v.max() >= 10**width:
        raise ValueError(f"value does not fit {width} digits")
    n = len(v)
    p = np.frombuffer(prefix.encode(), dtype=np.uint8)
    digits = np.empty((n, width), dtype=np.uint8)
    for i in range(width):
        digits[:, width - 1 - i] = 48 + (v // 10**i) % 10
    return _fixed_width_strings(np.concatenate([np.broadcast_to(p, (n, len(p))), digits], axis=1))


def day_code(day_number: int) -> str:
    """Days since 1970 as letters (no digits), so event ids carry only their sequence digits."""
    out = ""
    x = day_number
    for _ in range(4):
        out = chr(ord("a") + x % 26) + out
        x //= 26
    return out


def ipv4_text(addr: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc

    a = np.asarray(addr, dtype=np.uint32)
    octet_text = pa.array([str(i) for i in range(256)], type=pa.string())
    octets = [octet_text.take(pa.array(((a >> np.uint32(s)) & np.uint32(255)).astype(np.int32)))
              for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


def decimal_from_minor(minor: np.ndarray, scale: int = 2) -> pa.Array:
    """decimal128(18, scale) from integer minor units (exact; no float rounding)."""
    m = np.asarray(minor, dtype=np.int64)
    words = np.empty((len(m), 2), dtype=np.int64)
    words[:, 0] = m
    words[:, 1] = np.where(m < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(18, scale), len(m), [None, pa.py_buffer(words)])


def timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def take_nullable(pool: pa.Array, codes: np.ndarray) -> pa.Array:
    """pool[codes] with null where code < 0."""
    codes = np.asarray(codes, dtype=np.int64)
    mask = codes < 0
    idx = pa.array(np.where(mask, 0, codes), mask=mask if mask.any() else None)
    return pool.take(idx)
