"""PAN detection: the Python reference on known numbers, and Spark == reference on generated values."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.pan import BRANDS, card_brand, contains_pan, contains_pan_py, is_pan_digits, luhn_valid

# Public test card numbers of the networks (never real cards).
KNOWN_PANS = {
    "4111111111111111": "visa",
    "4012888888881881": "visa",
    "4222222222222": "visa",
    "5555555555554444": "mastercard",
    "5105105105105100": "mastercard",
    "2223003122003222": "mastercard",
    "378282246310005": "amex",
    "371449635398431": "amex",
    "6011111111111117": "discover",
    "6011000990139424": "discover",
    "30569309025904": "diners",
    "38520000023237": "diners",
    "3530111333300000": "jcb",
    "3566002020360505": "jcb",
    "6200000000000005": "unionpay",
    "6759649826438453": "maestro",
}


def textbook_luhn(number: str) -> bool:
    """Luhn as usually written (double every second digit from the right), independent of graph.pan."""
    digits = [int(c) for c in number]
    odd = digits[-1::-2]
    even = digits[-2::-2]
    return (sum(odd) + sum(sum(divmod(2 * d, 10)) for d in even)) % 10 == 0


@pytest.mark.parametrize("pan,brand", sorted(KNOWN_PANS.items()))
def test_known_test_pans_are_detected(pan, brand):
    assert luhn_valid(pan)
    assert card_brand(pan) == brand
    assert is_pan_digits(pan)
    assert contains_pan_py(pan)
    assert contains_pan_py(f"tok_{pan}")


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111112",          # Luhn fails
        "1234567812345670",          # Luhn ok, no brand starts with 1
        "4111111111111111111111",    # 22 digits: a serial number, not a PAN
        "37828224631000",            # Amex prefix at 14 digits
        "55555555555544",            # Mastercard prefix at 14 digits
        "4111.1111.1111.1111",       # dots are not a card layout
        "4111 1111-1111 1111",       # mixed separators
        "acc_000123",
        "",
    ],
)
def test_non_pans_are_not_detected(value):
    assert not contains_pan_py(value)


@pytest.mark.parametrize(
    "value",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "3782 822463 10005", "3056-930902-5904",
     "dev:5555555555554444:x", "6011 1111 1111 1117 trailing", "a4111111111111111b"],
)
def test_printed_layouts_and_embedded_pans_are_detected(value):
    assert contains_pan_py(value)


@given(st.text(alphabet="0123456789", min_size=2, max_size=19))
@settings(max_examples=300)
def test_luhn_matches_textbook(number):
    assert luhn_valid(number) == textbook_luhn(number)


def _with_check_digit(body: str) -> str:
    for d in "0123456789":
        if textbook_luhn(body + d):
            return body + d
    raise AssertionError("unreachable")


@st.composite
def pan_like(draw):
    """A Luhn-valid number with a real brand prefix and length, sometimes damaged, formatted, embedded."""
    brand = draw(st.sampled_from(BRANDS))
    length = draw(st.sampled_from(brand.lengths))
    prefix = str(draw(st.integers(brand.low, brand.high))).zfill(brand.digits)
    body = prefix + draw(st.text(alphabet="0123456789", min_size=length - brand.digits - 1,
                                 max_size=length - brand.digits - 1))
    number = _with_check_digit(body)
    if draw(st.booleans()):  # damage: flip the last digit, breaking Luhn
        number = number[:-1] + str((int(number[-1]) + draw(st.integers(1, 9))) % 10)
    sep = draw(st.sampled_from(["", "", " ", "-"]))
    if sep and length >= 16:
        number = sep.join(number[i:i + 4] for i in range(0, len(number), 4))
    elif sep and length in (14, 15):
        number = sep.join([number[:4], number[4:10], number[10:]])
    before = draw(st.sampled_from(["", "tok_", "x", "9", " ", "card-"]))
    after = draw(st.sampled_from(["", "_a", "0", " ", "-7"]))
    return before + number + after


values = st.one_of(
    st.none(),
    st.text(alphabet="0123456789 -_ab", max_size=30),
    st.text(alphabet="0123456789", min_size=12, max_size=20),
    pan_like(),
)


def test_generated_pan_like_values_hit_both_sides():
    """The generator must produce both PANs and near misses, or the Spark comparison proves little."""
    seen = set()

    @given(pan_like())
    @settings(max_examples=200, database=None)
    def collect(v):
        seen.add(contains_pan_py(v))

    collect()
    assert seen == {True, False}


@pytest.mark.spark
# Few examples of many values each: every example is one Spark job (seconds), the values are free.
@given(st.lists(values, min_size=150, max_size=300))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
def test_spark_detection_equals_reference(spark, column):
    df = spark.createDataFrame([(i, v) for i, v in enumerate(column)], "i int, v string")
    got = {r.i: r.p for r in df.select("i", contains_pan("v").alias("p")).collect()}
    want = {i: contains_pan_py(v) for i, v in enumerate(column)}
    assert got == want


@pytest.mark.spark
def test_spark_detection_on_known_values(spark):
    rows = [(p,) for p in KNOWN_PANS] + [("4111111111111112",), ("1234567812345670",), (None,),
                                          ("4111 1111 1111 1111",), ("x4111111111111111111111",)]
    df = spark.createDataFrame(rows, "v string")
    got = [r.p for r in df.select(contains_pan("v").alias("p")).collect()]
    assert got == [True] * len(KNOWN_PANS) + [False, False, False, True, False]
