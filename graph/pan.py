"""Raw card number (PAN) detection, in pure Python (the reference) and in Spark.

A value *contains a PAN* when it holds a candidate digit run that passes
three tests, as real detectors do (Luhn alone passes ~10% of random digit
strings, see the domain notes):

1. **Shape.** 13-19 digits, not touching other digits on either side
   (``tok_4111111111111111`` counts; a 25-digit serial number does not).
   Besides contiguous digits, the two ways card numbers are printed are
   accepted, with one consistent separator (a space or a dash):
   ``4-4-4-4[-1..3]`` (most brands, 16-19 digits) and ``4-6-4/5``
   (Amex/Diners). Other punctuation (dots, slashes, double spaces) is not a
   card-number layout and is not matched.
2. **Luhn** checksum.
3. **Brand**: a known issuer prefix *and* a length that brand issues
   (:data:`BRANDS`). Numeric identifiers that happen to satisfy all three
   still trip the check: such ids must be tokenised upstream anyway.

The Spark version (:func:`contains_pan`) is a plain SQL expression --
``regexp_extract_all`` plus higher-order ``exists``/``aggregate`` -- so it
runs distributed with no Python UDF. Nothing here ever returns or logs the
matched digits; callers only get booleans and counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

# One consistent separator per number (backreferences \1, \2).
PAN_CANDIDATE_PATTERN = (
    r"(?<![0-9])(?:"
    r"[0-9]{13,19}"
    r"|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{1,3})?"
    r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5}"
    r")(?![0-9])"
)
_CANDIDATE_RE = re.compile(PAN_CANDIDATE_PATTERN)
MIN_PAN_DIGITS = 13  # the shortest PAN any brand issues
_SEPARATORS = "[ -]"


@dataclass(frozen=True)
class Brand:
    name: str
    low: int          # prefix range, inclusive, on the first ``digits`` digits
    high: int
    digits: int
    lengths: tuple[int, ...]


_ALL = tuple(range(13, 20))
_16_19 = (16, 17, 18, 19)

# Issuer prefixes (IIN ranges) and the lengths each brand issues.
BRANDS: tuple[Brand, ...] = (
    Brand("visa", 4, 4, 1, (13, 16, 19)),
    Brand("mastercard", 51, 55, 2, (16,)),
    Brand("mastercard", 2221, 2720, 4, (16,)),
    Brand("amex", 34, 34, 2, (15,)),
    Brand("amex", 37, 37, 2, (15,)),
    Brand("discover", 6011, 6011, 4, _16_19),
    Brand("discover", 644, 649, 3, _16_19),
    Brand("discover", 65, 65, 2, _16_19),
    Brand("jcb", 3528, 3589, 4, _16_19),
    Brand("unionpay", 62, 62, 2, _16_19),
    Brand("diners", 300, 305, 3, (14, 15, 16, 17, 18, 19)),
    Brand("diners", 3095, 3095, 4, (14, 15, 16, 17, 18, 19)),
    Brand("diners", 36, 36, 2, (14, 15, 16, 17, 18, 19)),
    Brand("diners", 38, 39, 2, (14, 15, 16, 17, 18, 19)),
    Brand("maestro", 50, 50, 2, _ALL),
    Brand("maestro", 56, 58, 2, _ALL),
    Brand("maestro", 6304, 6304, 4, _ALL),
    Brand("maestro", 639, 639, 3, _ALL),
    Brand("maestro", 67, 67, 2, _ALL),
    Brand("mir", 2200, 2204, 4, _16_19),
    Brand("rupay", 60, 60, 2, (16,)),
    Brand("rupay", 81, 82, 2, (16,)),
)


# --- pure Python reference ------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The brand whose prefix and length fit ``digits`` (first match), else None."""
    for b in BRANDS:
        if len(digits) in b.lengths and len(digits) >= b.digits and b.low <= int(digits[: b.digits]) <= b.high:
            return b.name
    return None


def is_pan_digits(digits: str) -> bool:
    """True for a separator-free digit string that is a plausible PAN."""
    return (
        digits.isascii()
        and digits.isdigit()
        and 13 <= len(digits) <= 19
        and luhn_valid(digits)
        and card_brand(digits) is not None
    )


def contains_pan_py(value: str | None) -> bool:
    """Reference for :func:`contains_pan`: does ``value`` hold a PAN anywhere?"""
    if value is None:
        return False
    for m in _CANDIDATE_RE.finditer(value):
        if is_pan_digits(re.sub(_SEPARATORS, "", m.group(0))):
            return True
    return False


# --- Spark ------------------------------------------------------------------------


# The Spark check is SQL text parsed once per column: built from Column objects it
# took ~0.4 s of Py4J calls per column (22 brands x isin/between), ~12 s per run.
# Digit positions count from the right, from 1; even positions are doubled
# (element i of _LUHN_DOUBLED is the Luhn value of digit i doubled).
_LUHN_DOUBLED = "array(0, 2, 4, 6, 8, 1, 3, 5, 7, 9)"
_LUHN_SQL = (
    "aggregate(sequence(1, length(d)), 0, (acc, i) -> acc + CASE WHEN i % 2 = 0"
    f" THEN element_at({_LUHN_DOUBLED}, cast(substr(d, length(d) - i + 1, 1) AS INT) + 1)"
    " ELSE cast(substr(d, length(d) - i + 1, 1) AS INT) END) % 10 = 0"
)


def _brands_sql() -> str:
    # Every prefix range is compared on the first four digits (one cast per value):
    # a 2-digit range 51..55 is 5100..5599 in four-digit terms.
    rows = []
    for b in BRANDS:
        scale = 10 ** (4 - b.digits)
        lengths = ", ".join(map(str, b.lengths))
        rows.append(f"named_struct('lo', {b.low * scale}, 'hi', {(b.high + 1) * scale - 1},"
                    f" 'n', array({lengths}))")
    return (f"exists(array({', '.join(rows)}), b -> array_contains(b.n, length(d))"
            " AND cast(substr(d, 1, 4) AS INT) BETWEEN b.lo AND b.hi)")


_IS_PAN_SQL = f"({_LUHN_SQL}) AND {_brands_sql()}"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def contains_pan(column: str) -> Column:
    """Boolean column: string column ``column`` (a name) holds a PAN anywhere. Never null.

    Candidates are extracted with :data:`PAN_CANDIDATE_PATTERN`, stripped of
    separators, then tested with Luhn and the brand table, with higher-order
    functions (no Python UDF). CASE WHEN runs all of that only for values
    that can hold a PAN (:func:`may_hold_pan`).
    """
    v = _quote(column)
    candidates = f"regexp_extract_all({v}, r'{PAN_CANDIDATE_PATTERN}', 0)"
    digits = f"transform({candidates}, m -> regexp_replace(m, '{_SEPARATORS}', ''))"
    return F.when(may_hold_pan(F.col(v)),
                  F.coalesce(F.expr(f"exists({digits}, d -> {_IS_PAN_SQL})"), F.lit(False))
                  ).otherwise(F.lit(False))


def may_hold_pan(value: Column) -> Column:
    """Cheap necessary condition for :func:`contains_pan`: at least 13 digits in the value.

    Counted with translate() (a plain character map, compiled to Java code),
    so a scan can filter rows with it first: the regex and the higher-order
    Luhn/brand functions of ``contains_pan`` run interpreted and cost 20-30 us
    per payment row when applied to every row.
    """
    n = F.length(value)
    digits = n - F.length(F.translate(value, "0123456789", ""))
    # Most identifiers are shorter than 13 characters: their length settles it.
    return F.coalesce(F.when(n >= MIN_PAN_DIGITS, digits >= MIN_PAN_DIGITS), F.lit(False))
