"""Per-entity behavioural signals: each family on tiny hand-made tables, checked
against values worked out by hand or by a pure-Python reference on the same rows."""

from __future__ import annotations

import datetime as dt
import math
import random
import statistics
from collections import deque
from decimal import Decimal as D

import pytest

from graph import signals as S
from graph.schema import INPUT_SCHEMAS, spark_ddl

pytestmark = pytest.mark.spark

DS = dt.date(2026, 11, 24)
T0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
SEOUL = (37.5665, 126.9780)
SAO_PAULO = (-23.5505, -46.6333)
BUSAN = (35.1796, 129.0756)
TOKYO = (35.6762, 139.6503)


def at(seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days)


def table(spark, name: str, rows: list[dict]):
    cols = [f.name for f in INPUT_SCHEMAS[name]]
    unknown = {k for r in rows for k in r} - set(cols)
    assert not unknown, unknown
    return spark.createDataFrame([tuple(r.get(c) for c in cols) for r in rows], spark_ddl(INPUT_SCHEMAS[name]))


def payment(i, t, account="a1", card="c1", bin_="411111", merchant="m1", amount="5000.00",
            currency="KRW", status="approved", device="d1", ip="10.0.0.1") -> dict:
    return dict(event_id=f"p{i}", event_time=t, account_id=account, card_token=card, card_bin=bin_,
                merchant_id=merchant, amount=D(amount), currency=currency, status=status,
                device_id=device, ip=ip)


def transfer(i, t, src, dst, amount="100.00", currency="KRW", status="approved", device=None, ip=None) -> dict:
    return dict(event_id=f"t{i}", event_time=t, src_account_id=src, dst_account_id=dst,
                amount=D(str(amount)), currency=currency, status=status, device_id=device, ip=ip)


def session(i, t, account="a1", device=None, country=None, loc=None, cv=None) -> dict:
    lat, lon = loc if loc else (None, None)
    return dict(event_id=f"s{i}", event_time=t, account_id=account, event_type="login", device_id=device,
                ip=None, ip_country=country, ip_lat=lat, ip_lon=lon, tap_interval_cv=cv)


def by_key(df) -> dict[tuple[str, str], dict]:
    rows = [r.asDict() for r in df.collect()]
    out = {(r["entity_type"], r["entity_id"]): r for r in rows}
    assert len(out) == len(rows), "one row per (entity_type, entity_id)"
    return out


def haversine_km(a, b) -> float:
    (la1, lo1), (la2, lo2) = [(math.radians(x), math.radians(y)) for x, y in (a, b)]
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * S.EARTH_RADIUS_KM * math.asin(math.sqrt(h))


# --------------------------------------------------------------------------- timing and bursts


def test_constant_gaps_give_cv_zero_and_human_gaps_do_not(spark):
    human_offsets = [0, 10, 110, 1110, 1130]
    rows = [payment(f"b{i}", at(seconds=30 * i), account="bot", card="cb", device="db", ip="ib")
            for i in range(6)]
    rows += [payment(f"h{i}", at(seconds=s), account="human", card="ch", device="dh", ip="ih")
             for i, s in enumerate(human_offsets)]
    rows += [payment(f"o{i}", at(hours=i), account="two", card="c2", device="d2", ip="i2") for i in range(2)]
    payments = table(spark, "payments", rows)
    got = by_key(S.timing_signals(S.activity_events(payments, table(spark, "transfers", []))))

    gaps = [b - a for a, b in zip(human_offsets, human_offsets[1:], strict=False)]
    human_cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    for etype, eid in [("account", "bot"), ("device", "db"), ("ip", "ib"), ("card", "cb")]:
        assert got[(etype, eid)][S.EVENTS_N] == 6
        assert got[(etype, eid)][S.EVENT_GAP_CV] == pytest.approx(0.0, abs=1e-12)
    assert got[("account", "human")][S.EVENT_GAP_CV] == pytest.approx(human_cv, rel=1e-9)
    assert human_cv > 1.0
    # A single gap has no variation to measure.
    assert got[("account", "two")][S.EVENT_GAP_CV] is None


def test_outgoing_transfers_count_as_events_incoming_do_not(spark):
    transfers = table(spark, "transfers", [
        transfer(1, at(minutes=0), "s", "r", device="dv"),
        transfer(2, at(minutes=10), "s", "r", device="dv"),
        transfer(3, at(minutes=20), "s", "r", device="dv"),
    ])
    got = by_key(S.timing_signals(S.activity_events(table(spark, "payments", []), transfers)))
    assert got[("account", "s")][S.EVENTS_N] == 3
    assert got[("account", "s")][S.EVENT_GAP_CV] == pytest.approx(0.0, abs=1e-12)
    assert got[("device", "dv")][S.EVENTS_N] == 3
    assert ("account", "r") not in got


def test_session_tap_cadence(spark):
    bot_cvs = [0.02, 0.03, 0.04, 0.01, 0.05]
    human_cvs = [0.45, 0.62, 0.05, 0.80]
    rows = [session(f"b{i}", at(hours=i), account="bot", device="db", cv=v) for i, v in enumerate(bot_cvs)]
    rows += [session(f"h{i}", at(hours=i), account="human", cv=v) for i, v in enumerate(human_cvs)]
    rows.append(session("hn", at(hours=9), account="human", cv=None))
    got = by_key(S.session_signals(table(spark, "sessions", rows), _conf()))

    bot = got[("account", "bot")]
    assert (bot[S.SESSIONS_N], bot[S.TAP_CV_SESSIONS]) == (5, 5)
    assert bot[S.TAP_CV_MEAN] == pytest.approx(statistics.mean(bot_cvs))
    assert bot[S.TAP_CV_MIN] == pytest.approx(0.01)
    assert bot[S.BOT_SESSION_SHARE] == pytest.approx(1.0)
    assert got[("device", "db")][S.TAP_CV_MEAN] == pytest.approx(statistics.mean(bot_cvs))
    human = got[("account", "human")]
    assert (human[S.SESSIONS_N], human[S.TAP_CV_SESSIONS]) == (5, 4)
    assert human[S.TAP_CV_MEAN] == pytest.approx(statistics.mean(human_cvs))
    assert human[S.BOT_SESSION_SHARE] == pytest.approx(0.25)  # only 0.05 is below 0.1


def test_burst_against_own_baseline(spark):
    rows = [payment(f"q{d}", at(days=d, hours=12), account="quiet", card="cq", device="dq", ip="iq")
            for d in range(4)]
    # Day 4: 30 attempts 10 s apart, then one more at 12:30 -> 31 that day.
    rows += [payment(f"x{i}", at(days=4, hours=12, seconds=10 * i), account="burst", card="cx",
                     device="dx", ip="ix") for i in range(30)]
    rows += [payment("x30", at(days=4, hours=12, minutes=30), account="burst", card="cx", device="dx",
                     ip="ix")]
    rows += [payment(f"y{d}", at(days=d, hours=12), account="burst", card="cx", device="dx", ip="ix")
             for d in range(4)]
    events = S.activity_events(table(spark, "payments", rows), table(spark, "transfers", []))
    got = by_key(S.burst_signals(events))

    b = got[("account", "burst")]
    assert (b[S.PEAK_10MIN_EVENTS], b[S.PEAK_1H_EVENTS], b[S.PEAK_DAY_EVENTS]) == (30, 31, 31)
    assert b[S.MEDIAN_DAY_EVENTS] == 1.0  # days: 1, 1, 1, 1, 31
    assert b[S.DAY_BURST_RATIO] == pytest.approx(31.0)
    assert b[S.MEDIAN_HOUR_EVENTS] == 1.0  # active hours: 1, 1, 1, 1, 31
    assert b[S.HOUR_BURST_RATIO] == pytest.approx(31.0)
    q = got[("account", "quiet")]
    assert (q[S.PEAK_10MIN_EVENTS], q[S.PEAK_DAY_EVENTS], q[S.DAY_BURST_RATIO]) == (1, 1, 1.0)


# --------------------------------------------------------------------------- geography


def test_impossible_travel(spark):
    rows = [
        session(1, at(hours=0), account="A", device="dA", country="KR", loc=SEOUL),
        session(2, at(hours=0.5), account="A", device="dA", country=None, loc=None),  # not geolocated
        session(3, at(hours=1), account="A", device="dA", country="BR", loc=SAO_PAULO),
        session(4, at(hours=0), account="B", country="KR", loc=SEOUL),
        session(5, at(hours=3), account="B", country="KR", loc=BUSAN),
        session(6, at(hours=0), account="C", country="KR", loc=SEOUL),
        session(7, at(hours=3), account="C", country="JP", loc=TOKYO),
        # Simultaneous sessions: the gap is floored at one minute, not divided by zero.
        session(8, at(hours=0), account="D", country="KR", loc=SEOUL),
        session(9, at(hours=0), account="D", country="BR", loc=SAO_PAULO),
    ]
    got = by_key(S.geo_signals(table(spark, "sessions", rows), _conf()))
    sp_km = haversine_km(SEOUL, SAO_PAULO)
    assert 18_000 < sp_km < 18_700

    a = got[("account", "A")]
    assert (a[S.GEO_HOPS], a[S.IMPOSSIBLE_TRAVEL_N], a[S.DISTINCT_COUNTRIES]) == (1, 1, 2)
    assert a[S.FASTEST_HOP_KM] == pytest.approx(sp_km, rel=1e-9)
    assert a[S.FASTEST_HOP_HOURS] == pytest.approx(1.0)
    assert a[S.MAX_TRAVEL_SPEED_KMH] == pytest.approx(sp_km, rel=1e-9)
    assert (a[S.FASTEST_HOP_FROM], a[S.FASTEST_HOP_TO]) == ("KR", "BR")
    assert got[("device", "dA")][S.IMPOSSIBLE_TRAVEL_N] == 1

    b = got[("account", "B")]  # ~325 km: below the geolocation noise floor, and only ~108 km/h
    assert (b[S.GEO_HOPS], b[S.IMPOSSIBLE_TRAVEL_N], b[S.MAX_TRAVEL_SPEED_KMH]) == (1, 0, None)
    c = got[("account", "C")]  # ~1,150 km in 3 h: a flight, not impossible
    assert c[S.IMPOSSIBLE_TRAVEL_N] == 0
    assert c[S.MAX_TRAVEL_SPEED_KMH] == pytest.approx(haversine_km(SEOUL, TOKYO) / 3, rel=1e-9)
    d = got[("account", "D")]
    assert d[S.IMPOSSIBLE_TRAVEL_N] == 1
    assert d[S.FASTEST_HOP_HOURS] == pytest.approx(1 / 60)


# --------------------------------------------------------------------------- card testing


CT_ROWS = [
    # A tester's device: 10 cards, mostly one BIN, mostly tiny and declined, 1 minute apart.
    *[payment(i, at(minutes=i), account="a1" if i < 6 else "a2", card=f"c{i}",
              bin_="411111" if i < 7 else "522222", merchant="m1" if i % 2 else "m2",
              amount="500.00" if i < 4 else "20000.00", status="declined" if i < 6 else "approved",
              device="d1", ip="10.0.0.1") for i in range(10)],
    # Card c0 again at other merchants, on another device and IP, in other currencies.
    payment(10, at(hours=5), account="a3", card="c0", bin_="411111", merchant="m3", amount="0.50",
            currency="USD", device="d2", ip="10.0.0.2"),
    payment(11, at(hours=6), account="a3", card="c0", bin_="411111", merchant="m4", amount="5.00",
            currency="EUR", device="d2", ip="10.0.0.2"),
    payment(12, at(hours=7), account="a3", card="c0", bin_=None, merchant="m4", amount="1.00",
            currency="XYZ", status="declined", device=None, ip="10.0.0.2"),
]


def _card_testing_reference(rows: list[dict], tiny: dict[str, float]) -> dict[tuple[str, str], dict]:
    """The card-testing signals computed in plain Python over the same rows."""
    out = {}
    for etype, col in S.CARD_TESTING_ENTITIES.items():
        for eid in {r[col] for r in rows if r[col] is not None}:
            mine = [r for r in rows if r[col] == eid]
            times = sorted(r["event_time"] for r in mine)
            bins = [r["card_bin"] for r in mine if r["card_bin"] is not None]
            out[(etype, eid)] = {
                S.ATTEMPTS: len(mine),
                S.DECLINED: sum(r["status"] == "declined" for r in mine),
                S.DECLINE_RATE: sum(r["status"] == "declined" for r in mine) / len(mine),
                S.TINY_SHARE: sum(r["currency"] in tiny and float(r["amount"]) <= tiny[r["currency"]]
                                  for r in mine) / len(mine),
                S.DISTINCT_CARDS: len({r["card_token"] for r in mine}),
                S.DISTINCT_BINS: len(set(bins)),
                S.TOP_BIN_SHARE: max(bins.count(b) for b in bins) / len(bins) if bins else None,
                S.DISTINCT_MERCHANTS: len({r["merchant_id"] for r in mine}),
                S.DISTINCT_ACCOUNTS: len({r["account_id"] for r in mine}),
                S.DISTINCT_DEVICES: len({r["device_id"] for r in mine if r["device_id"] is not None}),
                S.DISTINCT_IPS: len({r["ip"] for r in mine if r["ip"] is not None}),
                S.PEAK_10MIN_ATTEMPTS: max(sum(t <= u < t + dt.timedelta(minutes=10) for u in times)
                                           for t in times),
                S.ATTEMPT_SPAN_MINUTES: (times[-1] - times[0]).total_seconds() / 60,
            }
    return out


def test_card_testing_matches_reference(spark):
    conf = _conf()
    got = by_key(S.card_testing_signals(table(spark, "payments", CT_ROWS), conf))
    want = _card_testing_reference(CT_ROWS, conf.tiny_amount)
    assert set(got) == set(want)
    for key, exp in want.items():
        for col, value in exp.items():
            if value is None:
                assert got[key][col] is None, (key, col)
            else:
                assert got[key][col] == pytest.approx(value), (key, col)

    # The hand-checked headline numbers for the tester's device and the re-used card.
    d1 = got[("device", "d1")]
    assert (d1[S.ATTEMPTS], d1[S.DECLINED], d1[S.DISTINCT_CARDS], d1[S.DISTINCT_BINS]) == (10, 6, 10, 2)
    assert (d1[S.DECLINE_RATE], d1[S.TINY_SHARE], d1[S.TOP_BIN_SHARE]) == (0.6, 0.4, 0.7)
    assert (d1[S.DISTINCT_ACCOUNTS], d1[S.PEAK_10MIN_ATTEMPTS], d1[S.ATTEMPT_SPAN_MINUTES]) == (2, 10, 9.0)
    assert d1[S.BURST_ATTEMPTS_PER_MIN] == 1.0
    assert got[("ip", "10.0.0.1")][S.DISTINCT_CARDS] == 10
    c0 = got[("card", "c0")]
    # 0.50 USD is tiny, 5.00 EUR is not, XYZ has no threshold; plus the tiny KRW attempt.
    assert (c0[S.ATTEMPTS], c0[S.DISTINCT_MERCHANTS], c0[S.DISTINCT_DEVICES], c0[S.TINY_SHARE]) == (
        4, 3, 2, 0.5)
    assert got[("merchant", "m4")][S.DISTINCT_BINS] == 1


# --------------------------------------------------------------------------- mules


def test_pass_through_dwell_and_fans(spark):
    rows = [
        # mule: 100 in, 90 out two hours later.
        transfer(1, at(hours=0), "src1", "mule", 100), transfer(2, at(hours=2), "mule", "dst1", 90),
        # keeper: money stays.
        transfer(3, at(hours=0), "src1", "keeper", 100),
        # slow: forwards everything, but after 72 h (outside the 48 h horizon).
        transfer(4, at(hours=0), "src1", "slow", 100), transfer(5, at(hours=72), "slow", "dst1", 100),
        # opening balance: pays 50 out of old money first, then forwards a fresh 100 within 1 h.
        transfer(6, at(hours=0), "old", "dst1", 50), transfer(7, at(hours=10), "src1", "old", 100),
        transfer(8, at(hours=11), "old", "dst1", 100),
        # A declined transfer moves no money.
        transfer(9, at(hours=1), "keeper", "dst1", 100, status="declined"),
    ]
    # hub: fan-in from 12 senders, fan-out to 3 receivers.
    rows += [transfer(100 + i, at(hours=i), f"snd{i}", "hub", 10) for i in range(12)]
    rows += [transfer(200 + i, at(hours=20 + i), "hub", f"rcv{i % 3}", 10) for i in range(6)]
    got = by_key(S.mule_signals(table(spark, "transfers", rows), _conf()))

    mule = got[("account", "mule")]
    assert mule[S.PASS_THROUGH_RATIO] == pytest.approx(0.9)
    assert mule[S.MEDIAN_DWELL_HOURS] == pytest.approx(2.0)
    assert (mule[S.INFLOW_AMOUNT], mule[S.OUTFLOW_AMOUNT], mule[S.FLOW_CURRENCY]) == (100.0, 90.0, "KRW")
    keeper = got[("account", "keeper")]
    assert (keeper[S.PASS_THROUGH_RATIO], keeper[S.MEDIAN_DWELL_HOURS], keeper[S.OUTFLOW_N]) == (0.0, None, 0)
    slow = got[("account", "slow")]
    assert (slow[S.PASS_THROUGH_RATIO], slow[S.MEDIAN_DWELL_HOURS]) == (0.0, 72.0)
    old = got[("account", "old")]
    assert (old[S.PASS_THROUGH_RATIO], old[S.MEDIAN_DWELL_HOURS]) == (1.0, 1.0)
    hub = got[("account", "hub")]
    assert (hub[S.INFLOW_N], hub[S.OUTFLOW_N], hub[S.FAN_IN], hub[S.FAN_OUT]) == (12, 6, 12, 3)
    src = got[("account", "src1")]
    assert (src[S.OUTFLOW_N], src[S.FAN_OUT], src[S.INFLOW_N], src[S.PASS_THROUGH_RATIO]) == (4, 4, 0, None)
    assert {t for t, _ in got} == {"account"}


def _fifo_reference(flows: list[tuple[int, int, str, int]], horizon_us: int) -> tuple[float, float | None]:
    """Pass-through ratio and median dwell by simulating FIFO money lots.

    ``flows`` = (time_us, 0 in / 1 out, event_id, amount). The opening balance is the smallest
    that keeps the balance non-negative; outflows spend the oldest money first.
    """
    seq = sorted(flows, key=lambda f: (f[0], f[1], f[2]))
    balance = opening = 0
    for _, d, _, a in seq:
        balance += a if d == 0 else -a
        opening = max(opening, -balance)
    lots = deque([[None, opening, None]] if opening else [])
    forwarded: dict[str, int] = {}
    dwell = []
    for i, (t, d, eid, a) in enumerate(seq):
        if d == 0:
            lots.append([t, a, eid])
            forwarded[eid] = 0
            nxt = next((u for u, dd, _, _ in seq[i + 1:] if dd == 1), None)
            if nxt is not None:
                dwell.append((nxt - t) / S.HOUR_US)
            continue
        need = a
        while need:
            lot = lots[0]
            take = min(need, lot[1])
            lot[1] -= take
            need -= take
            if lot[0] is not None and t - lot[0] <= horizon_us:
                forwarded[lot[2]] += take
            if lot[1] == 0:
                lots.popleft()
    total_in = sum(a for _, d, _, a in seq if d == 0)
    return sum(forwarded.values()) / total_in, (statistics.median(dwell) if dwell else None)


def test_pass_through_matches_fifo_reference(spark):
    rnd = random.Random(20261124)
    rows, flows = [], {}
    n = 0
    for acct in ("x1", "x2", "x3", "x4", "x5"):
        flows[acct] = []
        for _ in range(rnd.randint(6, 14)):
            n += 1
            minute = rnd.randint(0, 6 * 24 * 60)
            amount = rnd.randint(1, 50) * 10
            direction = rnd.random() < 0.5
            t = at(minutes=minute)
            if direction:
                rows.append(transfer(n, t, acct, f"peer{n}", amount))
            else:
                rows.append(transfer(n, t, f"peer{n}", acct, amount))
            us = int(t.timestamp()) * 1_000_000
            flows[acct].append((us, int(direction), f"t{n}", amount))
    # Guarantee each account has inflows (ratio defined) and a horizon-boundary case.
    for acct in flows:
        n += 1
        t = at(minutes=100)
        rows.append(transfer(n, t, f"peer{n}", acct, 70))
        flows[acct].append((int(t.timestamp()) * 1_000_000, 0, f"t{n}", 70))
    n += 1
    t = at(minutes=100, hours=48)  # exactly at the horizon: counts as forwarded
    rows.append(transfer(n, t, "x1", f"peer{n}", 30))
    flows["x1"].append((int(t.timestamp()) * 1_000_000, 1, f"t{n}", 30))

    conf = _conf()
    got = by_key(S.mule_signals(table(spark, "transfers", rows), conf))
    horizon = int(conf.pass_through_hours * S.HOUR_US)
    ratios = []
    for acct, fl in flows.items():
        ratio, dwell = _fifo_reference(fl, horizon)
        ratios.append(ratio)
        row = got[("account", acct)]
        assert row[S.PASS_THROUGH_RATIO] == pytest.approx(ratio, abs=1e-12), acct
        if dwell is None:
            assert row[S.MEDIAN_DWELL_HOURS] is None
        else:
            assert row[S.MEDIAN_DWELL_HOURS] == pytest.approx(dwell), acct
    assert len(set(ratios)) > 1  # the random worlds really differ


def test_flow_currency_is_the_main_inflow_currency(spark):
    rows = [
        transfer(1, at(hours=0), "p1", "acc", 100), transfer(2, at(hours=1), "p2", "acc", 100),
        transfer(3, at(hours=2), "p3", "acc", 5, currency="USD"),
        transfer(4, at(hours=3), "acc", "p4", 5, currency="USD"),
        transfer(5, at(hours=4), "acc", "p4", 50),
    ]
    got = by_key(S.mule_signals(table(spark, "transfers", rows), _conf()))
    acc = got[("account", "acc")]
    assert (acc[S.FLOW_CURRENCY], acc[S.INFLOW_AMOUNT], acc[S.OUTFLOW_AMOUNT]) == ("KRW", 200.0, 50.0)
    assert acc[S.PASS_THROUGH_RATIO] == pytest.approx(0.25)
    assert (acc[S.INFLOW_N], acc[S.OUTFLOW_N], acc[S.FAN_IN], acc[S.FAN_OUT]) == (3, 2, 3, 1)


# --------------------------------------------------------------------------- reasons


def _conf():
    from graph.config import SignalConf

    return SignalConf()


def _signals_row(**values) -> dict:
    row = dict.fromkeys(S.SIGNAL_NAMES)
    row.update(values)
    return row


def test_reason_texts_carry_the_numbers(spark, config):
    ddl = ", ".join(f"`{n}` {t}" for n, t in S.SIGNAL_COLUMNS)
    rows = [
        _signals_row(entity_type="device", entity_id="d-81f", attempts=340, declined=211, decline_rate=0.62,
                     tiny_share=0.9, distinct_cards=74, distinct_bins=2, top_bin_share=0.95,
                     attempt_span_minutes=9.2),
        _signals_row(entity_type="account", entity_id="mule", inflow_n=12, fan_in=7, fan_out=2,
                     pass_through_ratio=0.91, median_dwell_hours=3.0, account_age_days=5, kyc_level=0),
        _signals_row(entity_type="account", entity_id="bot", tap_cv_sessions=41, tap_cv_mean=0.031,
                     events_n=50, event_gap_cv=0.02, peak_day_events=120, median_day_events=3.0,
                     day_burst_ratio=40.0),
        _signals_row(entity_type="account", entity_id="traveller", impossible_travel_n=1,
                     fastest_hop_km=8950.4, fastest_hop_hours=1.2, fastest_hop_from="KR",
                     fastest_hop_to="BR"),
        _signals_row(entity_type="card", entity_id="c1", attempts=40, distinct_cards=1, distinct_merchants=37,
                     decline_rate=0.1, tiny_share=0.0, attempt_span_minutes=3000.0),
        _signals_row(entity_type="ip", entity_id="10.0.0.1", distinct_cards=12, distinct_bins=6,
                     top_bin_share=0.3),
        # Just below every threshold: no reasons at all.
        _signals_row(entity_type="account", entity_id="quiet", attempts=19, decline_rate=0.9,
                     tiny_share=0.9, distinct_cards=9, tap_cv_sessions=4, tap_cv_mean=0.01, events_n=9,
                     event_gap_cv=0.0, peak_day_events=19, day_burst_ratio=50.0, impossible_travel_n=0,
                     inflow_n=2, pass_through_ratio=1.0, fan_in=9, fan_out=9, account_age_days=15),
        _signals_row(entity_type="merchant", entity_id="big", attempts=1000, decline_rate=0.05,
                     tiny_share=0.0, distinct_cards=900, distinct_bins=300, top_bin_share=0.05),
    ]
    signals = spark.createDataFrame([tuple(r[n] for n in S.SIGNAL_NAMES) for r in rows], ddl)
    got = {r["entity_id"]: r[S.SIGNAL_REASONS] for r in S.signal_reasons(signals, config).collect()}

    assert got["d-81f"] == [
        "62% of 340 card attempts declined within 9 minutes",
        "90% of 340 card attempts were tiny authorisations",
        "74 distinct cards from 2 BINs on one device (95% of attempts on one BIN)",
    ]
    assert got["mule"] == [
        "forwarded 91% of inflows within 48 h (median dwell 3.0 h; 12 inflows from 7 senders)",
        "new account: 5 days old (KYC level 0) with 12 incoming transfers",
    ]
    assert got["bot"] == [
        "bot-like taps: tap-interval CV 0.03 over 41 sessions",
        "machine-like timing: interval CV 0.02 over 50 events",
        "burst: 120 events in one day against a median of 3.0 per active day",
    ]
    assert got["traveller"] == ["impossible travel: 8,950 km in 1.2 h (KR→BR)"]
    assert got["c1"] == ["card tried at 37 merchants (40 attempts)"]
    assert got["10.0.0.1"] == ["12 distinct cards from 6 BINs on one IP"]
    assert got["quiet"] == []
    assert got["big"] == []


# --------------------------------------------------------------------------- the whole thing


def test_entity_signals_end_to_end(spark, config):
    payments = [
        payment(i, at(minutes=i / 2), account="tester", card=f"k{i}", bin_="411111",
                amount="100.00", status="declined" if i < 20 else "approved", device="d-81f", ip="10.9.9.9")
        for i in range(25)
    ]
    payments.append(payment("old", dt.datetime(2026, 10, 1, tzinfo=dt.UTC), account="tester", card="k0",
                            device="d-81f"))  # before the 30-day window: ignored
    transfers = [transfer(i, at(hours=10 * i), f"s{i}", "mule", 100) for i in range(3)]
    transfers += [transfer(10 + i, at(hours=10 * i + 2), "mule", "out", 90) for i in range(3)]
    sessions = [
        session(1, at(hours=0), account="mule", country="KR", loc=SEOUL, cv=0.4),
        session(2, at(hours=1), account="mule", country="BR", loc=SAO_PAULO, cv=0.5),
    ]
    accounts = table(spark, "accounts", [
        dict(account_id="mule", created_at=dt.datetime(2026, 11, 20, 6, tzinfo=dt.UTC), kyc_level=1),
        dict(account_id="dormant", created_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), kyc_level=3),
    ])
    tables = {"accounts": accounts, "payments": table(spark, "payments", payments),
              "transfers": table(spark, "transfers", transfers), "sessions": table(spark, "sessions", sessions),
              "labels": table(spark, "labels", [])}
    out = S.entity_signals(spark, config, tables, DS, 30)
    assert [(f.name, f.dataType.simpleString()) for f in out.schema] == [
        *S.SIGNAL_COLUMNS, (S.SIGNAL_REASONS, "array<string>")]
    got = by_key(out)

    d = got[("device", "d-81f")]
    assert (d[S.ATTEMPTS], d[S.DECLINED], d[S.DISTINCT_CARDS], d[S.ATTEMPT_SPAN_MINUTES]) == (25, 20, 25, 12.0)
    assert d[S.SIGNAL_REASONS][:2] == [
        "80% of 25 card attempts declined within 12 minutes",
        "100% of 25 card attempts were tiny authorisations",
    ]
    assert "25 distinct cards from 1 BIN on one device (100% of attempts on one BIN)" in d[S.SIGNAL_REASONS]
    mule = got[("account", "mule")]
    assert (mule[S.PASS_THROUGH_RATIO], mule[S.MEDIAN_DWELL_HOURS]) == (0.9, 2.0)
    assert (mule[S.ACCOUNT_AGE_DAYS], mule[S.KYC_LEVEL], mule[S.SESSIONS_N]) == (4, 1, 2)
    km = f"{haversine_km(SEOUL, SAO_PAULO):,.0f}"
    assert mule[S.SIGNAL_REASONS] == [
        f"impossible travel: {km} km in 1.0 h (KR→BR)",
        "forwarded 90% of inflows within 48 h (median dwell 2.0 h; 3 inflows from 3 senders)",
    ]
    assert mule[S.ATTEMPTS] is None  # no payments: card-testing signals do not apply
    assert got[("account", "out")][S.SIGNAL_REASONS] == []
    assert ("account", "dormant") not in got  # no activity in the window
    assert {t for t, _ in got} == {"account", "device", "ip", "card", "merchant"}


def test_transfers_only_world(spark, config):
    """AMLSim-style worlds have only transfers: empty payments and sessions, or none at all."""
    transfers = table(spark, "transfers", [
        transfer(1, at(hours=0), "a", "b", 100, device="dv", ip="1.1.1.1"),
        transfer(2, at(hours=1), "b", "c", 95, device="dv", ip="1.1.1.1"),
    ])
    empty = {"payments": table(spark, "payments", []), "sessions": table(spark, "sessions", []),
             "accounts": table(spark, "accounts", []), "labels": table(spark, "labels", [])}
    got = by_key(S.entity_signals(spark, config, {**empty, "transfers": transfers}, DS, 30))
    missing = by_key(S.entity_signals(spark, config, {"transfers": transfers}, DS, 30))
    assert got == missing
    assert set(got) == {("account", "a"), ("account", "b"), ("account", "c"), ("device", "dv"),
                        ("ip", "1.1.1.1")}
    b = got[("account", "b")]
    assert (b[S.PASS_THROUGH_RATIO], b[S.MEDIAN_DWELL_HOURS], b[S.EVENTS_N]) == (0.95, 1.0, 1)
    assert (b[S.ATTEMPTS], b[S.SESSIONS_N], b[S.ACCOUNT_AGE_DAYS]) == (None, None, None)
    assert got[("device", "dv")][S.EVENTS_N] == 2
