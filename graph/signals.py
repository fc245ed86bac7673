"""Per-entity behavioural signals over the lookback window (issue 6).

``entity_signals`` turns the validated input tables into one row per
``(entity_type, entity_id)`` for every account, device, IP, card and merchant
seen in the window, with one typed column per signal. Each family of signals
is a pure ``DataFrame -> DataFrame`` function keyed by ``(entity_type,
entity_id)``; the families are stacked (``unionByName``) and folded with one
``groupBy``, so combining them costs one shuffle rather than a chain of outer
joins. ``signal_reasons`` adds the human-readable reason texts for the strong
signals. Everything is Spark SQL (window functions and aggregates): nothing is
collected to the driver.

A signal is null when its family has no rows for the entity (a device has no
mule signals; an account without payments has no card-testing signals) or
when it is undefined (a CV needs at least two gaps).

"Events" are the actions an entity initiates: payments (account, device, IP,
card) and outgoing transfers (account, device, IP), approved or declined.

| column | type | applies to | meaning (unit) |
|---|---|---|---|
| entity_type | string | all | account, device, ip, card, merchant |
| entity_id | string | all | raw identifier (internal table only) |
| events_n | bigint | acc/dev/ip/card | events in the window |
| event_gap_cv | double | acc/dev/ip/card | std/mean (population) of the gaps between consecutive events; ~0 = metronome-like; null below 2 gaps |
| peak_10min_events | bigint | acc/dev/ip/card | most events in any sliding 10-minute window |
| peak_1h_events | bigint | acc/dev/ip/card | most events in any sliding hour |
| peak_day_events | bigint | acc/dev/ip/card | most events in one UTC day |
| median_day_events | double | acc/dev/ip/card | median events per active UTC day (the entity's own baseline) |
| day_burst_ratio | double | acc/dev/ip/card | peak_day_events / median_day_events |
| median_hour_events | double | acc/dev/ip/card | median events per active UTC clock hour |
| hour_burst_ratio | double | acc/dev/ip/card | peak_1h_events / median_hour_events |
| sessions_n | bigint | acc/dev | sessions in the window |
| tap_cv_sessions | bigint | acc/dev | sessions with a tap_interval_cv |
| tap_cv_mean | double | acc/dev | mean tap_interval_cv (near 0 = machine-like) |
| tap_cv_min | double | acc/dev | lowest tap_interval_cv |
| bot_session_share | double | acc/dev | share of tap_cv_sessions with cv < ``bot_tap_cv`` |
| distinct_countries | bigint | acc/dev | distinct ip_country over sessions |
| geo_hops | bigint | acc/dev | consecutive session pairs both geolocated |
| impossible_travel_n | bigint | acc/dev | hops of >= ``geo_min_distance_km`` faster than ``impossible_speed_kmh`` |
| max_travel_speed_kmh | double | acc/dev | fastest hop of >= ``geo_min_distance_km`` (km/h); null if none |
| fastest_hop_km | double | acc/dev | great-circle distance of that hop (km) |
| fastest_hop_hours | double | acc/dev | time between its two sessions (h, floored at ``geo_min_gap_minutes``) |
| fastest_hop_from | string | acc/dev | ip_country before the hop |
| fastest_hop_to | string | acc/dev | ip_country after the hop |
| attempts | bigint | acc/dev/ip/card/merchant | payment attempts (authorisations) |
| declined | bigint | same | declined attempts |
| decline_rate | double | same | declined / attempts |
| tiny_share | double | same | share of attempts with amount <= ``tiny_amount[currency]`` (unknown currency: not tiny) |
| distinct_cards | bigint | same | distinct card tokens |
| distinct_bins | bigint | same | distinct card BINs (null BINs ignored) |
| top_bin_share | double | same | share of BIN-known attempts on the most used BIN (BIN concentration) |
| distinct_merchants | bigint | same | distinct merchants (for a card: merchants per card) |
| distinct_accounts | bigint | same | distinct paying accounts |
| distinct_devices | bigint | same | distinct devices |
| distinct_ips | bigint | same | distinct IPs |
| peak_10min_attempts | bigint | same | most attempts in any sliding 10-minute window |
| burst_attempts_per_min | double | same | peak_10min_attempts / 10 (attempts per minute in the densest burst) |
| attempt_span_minutes | double | same | minutes from first to last attempt |
| inflow_n | bigint | account | approved incoming transfers (all currencies) |
| outflow_n | bigint | account | approved outgoing transfers (all currencies) |
| fan_in | bigint | account | distinct senders |
| fan_out | bigint | account | distinct receivers |
| flow_currency | string | account | the account's main transfer currency (most inflows); amounts below are in it |
| inflow_amount | double | account | sum of inflows (flow_currency units) |
| outflow_amount | double | account | sum of outflows (flow_currency units) |
| pass_through_ratio | double | account | share of inflow sent on within ``pass_through_hours`` (FIFO, see ``mule_signals``) |
| median_dwell_hours | double | account | median over inflows of hours until the next outflow; null if none followed |
| account_age_days | int | account | whole days from created_at to the end of ``ds`` |
| kyc_level | int | account | from accounts (0 = none ... 3 = full) |
| signal_reasons | array<string> | all | reason texts of the strong signals (``signal_reasons``) |
"""

from __future__ import annotations

import datetime as dt
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window, WindowSpec
from pyspark.sql import functions as F

from graph.config import RingfenceConfig, SignalConf
from graph.schema import INPUT_SCHEMAS, spark_ddl
from graph.validate import events_in_window

ENTITY_TYPE = "entity_type"
ENTITY_ID = "entity_id"
KEYS = (ENTITY_TYPE, ENTITY_ID)

# Timing and bursts over events.
EVENTS_N = "events_n"
EVENT_GAP_CV = "event_gap_cv"
PEAK_10MIN_EVENTS = "peak_10min_events"
PEAK_1H_EVENTS = "peak_1h_events"
PEAK_DAY_EVENTS = "peak_day_events"
MEDIAN_DAY_EVENTS = "median_day_events"
DAY_BURST_RATIO = "day_burst_ratio"
MEDIAN_HOUR_EVENTS = "median_hour_events"
HOUR_BURST_RATIO = "hour_burst_ratio"
# Session behaviour.
SESSIONS_N = "sessions_n"
TAP_CV_SESSIONS = "tap_cv_sessions"
TAP_CV_MEAN = "tap_cv_mean"
TAP_CV_MIN = "tap_cv_min"
BOT_SESSION_SHARE = "bot_session_share"
# Geography.
DISTINCT_COUNTRIES = "distinct_countries"
GEO_HOPS = "geo_hops"
IMPOSSIBLE_TRAVEL_N = "impossible_travel_n"
MAX_TRAVEL_SPEED_KMH = "max_travel_speed_kmh"
FASTEST_HOP_KM = "fastest_hop_km"
FASTEST_HOP_HOURS = "fastest_hop_hours"
FASTEST_HOP_FROM = "fastest_hop_from"
FASTEST_HOP_TO = "fastest_hop_to"
# Card testing.
ATTEMPTS = "attempts"
DECLINED = "declined"
DECLINE_RATE = "decline_rate"
TINY_SHARE = "tiny_share"
DISTINCT_CARDS = "distinct_cards"
DISTINCT_BINS = "distinct_bins"
TOP_BIN_SHARE = "top_bin_share"
DISTINCT_MERCHANTS = "distinct_merchants"
DISTINCT_ACCOUNTS = "distinct_accounts"
DISTINCT_DEVICES = "distinct_devices"
DISTINCT_IPS = "distinct_ips"
PEAK_10MIN_ATTEMPTS = "peak_10min_attempts"
BURST_ATTEMPTS_PER_MIN = "burst_attempts_per_min"
ATTEMPT_SPAN_MINUTES = "attempt_span_minutes"
# Mules.
INFLOW_N = "inflow_n"
OUTFLOW_N = "outflow_n"
FAN_IN = "fan_in"
FAN_OUT = "fan_out"
FLOW_CURRENCY = "flow_currency"
INFLOW_AMOUNT = "inflow_amount"
OUTFLOW_AMOUNT = "outflow_amount"
PASS_THROUGH_RATIO = "pass_through_ratio"
MEDIAN_DWELL_HOURS = "median_dwell_hours"
ACCOUNT_AGE_DAYS = "account_age_days"
KYC_LEVEL = "kyc_level"
SIGNAL_REASONS = "signal_reasons"

# The output schema, in column order (reasons last).
SIGNAL_COLUMNS: tuple[tuple[str, str], ...] = (
    (ENTITY_TYPE, "string"), (ENTITY_ID, "string"),
    (EVENTS_N, "bigint"), (EVENT_GAP_CV, "double"),
    (PEAK_10MIN_EVENTS, "bigint"), (PEAK_1H_EVENTS, "bigint"), (PEAK_DAY_EVENTS, "bigint"),
    (MEDIAN_DAY_EVENTS, "double"), (DAY_BURST_RATIO, "double"),
    (MEDIAN_HOUR_EVENTS, "double"), (HOUR_BURST_RATIO, "double"),
    (SESSIONS_N, "bigint"), (TAP_CV_SESSIONS, "bigint"), (TAP_CV_MEAN, "double"),
    (TAP_CV_MIN, "double"), (BOT_SESSION_SHARE, "double"),
    (DISTINCT_COUNTRIES, "bigint"), (GEO_HOPS, "bigint"), (IMPOSSIBLE_TRAVEL_N, "bigint"),
    (MAX_TRAVEL_SPEED_KMH, "double"), (FASTEST_HOP_KM, "double"), (FASTEST_HOP_HOURS, "double"),
    (FASTEST_HOP_FROM, "string"), (FASTEST_HOP_TO, "string"),
    (ATTEMPTS, "bigint"), (DECLINED, "bigint"), (DECLINE_RATE, "double"), (TINY_SHARE, "double"),
    (DISTINCT_CARDS, "bigint"), (DISTINCT_BINS, "bigint"), (TOP_BIN_SHARE, "double"),
    (DISTINCT_MERCHANTS, "bigint"), (DISTINCT_ACCOUNTS, "bigint"), (DISTINCT_DEVICES, "bigint"),
    (DISTINCT_IPS, "bigint"), (PEAK_10MIN_ATTEMPTS, "bigint"), (BURST_ATTEMPTS_PER_MIN, "double"),
    (ATTEMPT_SPAN_MINUTES, "double"),
    (INFLOW_N, "bigint"), (OUTFLOW_N, "bigint"), (FAN_IN, "bigint"), (FAN_OUT, "bigint"),
    (FLOW_CURRENCY, "string"), (INFLOW_AMOUNT, "double"), (OUTFLOW_AMOUNT, "double"),
    (PASS_THROUGH_RATIO, "double"), (MEDIAN_DWELL_HOURS, "double"),
    (ACCOUNT_AGE_DAYS, "int"), (KYC_LEVEL, "int"),
)
SIGNAL_NAMES: tuple[str, ...] = tuple(n for n, _ in SIGNAL_COLUMNS)

EVENT_TIME = "event_time"
_US = "_us"  # event time as microseconds since the epoch: exact, timezone-free ordering
_H = "_ehash"  # 64-bit hash of (entity_type, entity_id): the leading sort key of per-entity windows
_H2 = "_ehash2"  # a second, 32-bit hash of the entity: with _H, a 96-bit key that stands in for the strings
_EH = (_H, _H2)
MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
EARTH_RADIUS_KM = 6371.0

# Which identifier column names each entity in each table.
PAYMENT_ENTITIES = {"account": "account_id", "device": "device_id", "ip": "ip", "card": "card_token"}
TRANSFER_ENTITIES = {"account": "src_account_id", "device": "device_id", "ip": "ip"}
SESSION_ENTITIES = {"account": "account_id", "device": "device_id"}
CARD_TESTING_ENTITIES = {**PAYMENT_ENTITIES, "merchant": "merchant_id"}


# --------------------------------------------------------------------------- helpers


def _by_entity(df: DataFrame, id_cols: dict[str, str], keep: list[str]) -> DataFrame:
    """One row per (input row, entity it names): a single scan instead of one union per type."""
    pairs = [
        F.struct(F.lit(t).alias(ENTITY_TYPE), F.col(c).cast("string").alias(ENTITY_ID))
        for t, c in id_cols.items()
    ]
    return (
        df.select(*keep, F.explode(F.array(*pairs)).alias("_e"))
        .select(F.col("_e." + ENTITY_TYPE).alias(ENTITY_TYPE), F.col("_e." + ENTITY_ID).alias(ENTITY_ID),
                *keep)
        .where(F.col(ENTITY_ID).isNotNull())
    )


def _ratio(num: Column, den: Column) -> Column:
    # try_divide: null instead of an ANSI divide-by-zero error.
    return F.try_divide(num.cast("double"), den.cast("double"))


def _table(spark: SparkSession, tables: dict[str, DataFrame], name: str) -> DataFrame:
    """The named input, or an empty one with the contract schema (AMLSim worlds have no payments)."""
    df = tables.get(name)
    if df is None:
        return spark.createDataFrame([], spark_ddl(INPUT_SCHEMAS[name]))
    return df


def _by_entity_hash(df: DataFrame) -> DataFrame:
    """``df`` with the entity's hashes ``_EH``, shuffled by them: the one shuffle of a family.

    Partitioning by the hashes puts each entity's rows in one partition, as
    partitioning by ``KEYS`` would, and lets the family's aggregates and joins
    key on the two numbers alone (no shuffle: they are the partitioning) and
    bring the strings back once per entity. Fixed-width keys hash, compare and
    pack faster: keyed by the strings, the event family took 113.0 s at 10M
    events, 93.3 s keyed like this (task CPU 201 -> 157 s). Windows keep
    ``KEYS`` in their partition and stay exact; two entities share both
    hashes with probability about n^2 / 2^97 (~1e-16 for 5M entities).
    """
    return (df.withColumn(_H, F.xxhash64(*KEYS)).withColumn(_H2, F.hash(*KEYS))
            .repartition(*_EH))


def _entity_window() -> WindowSpec:
    """A window per entity, for frames from ``_by_entity_hash``.

    The hashes are redundant as keys but lead the sort: the sorter compares
    8-byte key prefixes first, and the prefix of ``entity_type`` ("account",
    "device") ties on almost every pair, so each comparison fell through to the
    full strings. A hash prefix settles nearly all of them (the events window
    sort costs ~40% less CPU at 1M events). Partitions are the same entities.
    """
    return Window.partitionBy(*_EH, *KEYS)


def _first_flag(partition: list[str]) -> Column:
    """1 on one row per distinct non-null value of the last column within the partition, else 0.

    ``sum()`` of it is an exact count-distinct. Its window is keyed by the entity plus the value,
    so it reuses the entity shuffle; several ``countDistinct`` would add an Expand and a shuffle.
    """
    w = Window.partitionBy(*partition).orderBy(_US)
    return F.when(F.col(partition[-1]).isNotNull() & (F.row_number().over(w) == 1), 1).otherwise(0)


def _haversine_km(lat1: Column, lon1: Column, lat2: Column, lon2: Column) -> Column:
    p1, p2 = F.radians(lat1), F.radians(lat2)
    dlat, dlon = p2 - p1, F.radians(lon2) - F.radians(lon1)
    a = F.pow(F.sin(dlat / 2), 2) + F.cos(p1) * F.cos(p2) * F.pow(F.sin(dlon / 2), 2)
    # least(): rounding can push a a hair above 1 for antipodal points.
    return F.lit(2 * EARTH_RADIUS_KM) * F.asin(F.sqrt(F.least(a, F.lit(1.0))))


# --------------------------------------------------------------------------- families


def activity_events(payments: DataFrame, transfers: DataFrame) -> DataFrame:
    """Events each account/device/IP/card initiated: (entity_type, entity_id, event_time, _us, _ehash, _ehash2)."""
    pay = _by_entity(payments, PAYMENT_ENTITIES, [EVENT_TIME])
    out = _by_entity(transfers, TRANSFER_ENTITIES, [EVENT_TIME])
    # One shuffle by entity serves every later window, groupBy and join keyed by (_EH, ...).
    return pay.unionByName(out).withColumn(_US, F.unix_micros(EVENT_TIME)).transform(_by_entity_hash)


def event_signals(events: DataFrame) -> DataFrame:
    """Timing and burst signals of ``activity_events`` in one pass (``timing_signals`` + ``burst_signals``).

    One window sort per entity serves the gaps and both sliding windows, and
    one aggregate folds them; the day and hour medians come from
    ``_bucket_stats``. Computed separately, the two families sorted the events
    twice and the medians sorted every (entity, bucket) row.
    """
    ordered = _entity_window().orderBy(_US)
    per_event = events.select(
        *_EH, *KEYS,
        ((F.col(_US) - F.lag(_US).over(ordered)) / 1e6).alias("_gap"),
        # Frames are [t, t + width): the events that start a window at each event.
        F.count(F.lit(1)).over(ordered.rangeBetween(0, 10 * MINUTE_US - 1)).alias("_c10"),
        F.count(F.lit(1)).over(ordered.rangeBetween(0, HOUR_US - 1)).alias("_c60"),
    )
    cv = F.when(F.count("_gap") >= 2, _ratio(F.stddev_pop("_gap"), F.avg("_gap")))
    per_entity = per_event.groupBy(*_EH, *KEYS).agg(
        F.count(F.lit(1)).alias(EVENTS_N),
        cv.alias(EVENT_GAP_CV),
        F.max("_c10").alias(PEAK_10MIN_EVENTS),
        F.max("_c60").alias(PEAK_1H_EVENTS),
    )
    days = _bucket_stats(events, DAY_US, PEAK_DAY_EVENTS, MEDIAN_DAY_EVENTS)
    hours = _bucket_stats(events, HOUR_US, None, MEDIAN_HOUR_EVENTS)
    # The bucket stats are keyed by the hashes alone; joined on them, they need no shuffle. Their
    # narrower projection gets its own map-side shuffle of the events (9 of 565 CPU s at 10M).
    return (
        per_entity.join(days, list(_EH), "left").join(hours, list(_EH), "left").drop(*_EH)
        .withColumn(DAY_BURST_RATIO, _ratio(F.col(PEAK_DAY_EVENTS), F.col(MEDIAN_DAY_EVENTS)))
        .withColumn(HOUR_BURST_RATIO, _ratio(F.col(PEAK_1H_EVENTS), F.col(MEDIAN_HOUR_EVENTS)))
    )


def _bucket_stats(events: DataFrame, width_us: int, peak: str | None, median: str) -> DataFrame:
    """Per entity (``_EH``): the most events in one bucket (UTC day, clock hour) and the median over its active buckets.

    The median is Spark's ``median`` (the middle count, or the mean of the two
    middle counts) read off a histogram of the bucket counts: which counts
    cover the middle positions follows from cumulative frequencies over a few
    rows per entity. ``median()`` itself kept a map per entity and fell back
    to sorting every bucket row.
    """
    counts = (events.groupBy(*_EH, F.floor(F.col(_US) / width_us).alias("_b"))
              .agg(F.count(F.lit(1)).alias("_n")))
    hist = counts.groupBy(*_EH, "_n").agg(F.count(F.lit(1)).alias("_f"))
    by_n = Window.partitionBy(*_EH).orderBy("_n")
    cum = hist.select(
        *_EH, "_n", "_f",
        F.sum("_f").over(by_n.rowsBetween(Window.unboundedPreceding, Window.currentRow)).alias("_cum"),
        F.sum("_f").over(by_n.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)).alias("_all"),
    )

    def at(position: Column) -> Column:
        # The count at a 0-based position of the sorted bucket counts.
        covers = (F.col("_cum") - F.col("_f") <= position) & (position < F.col("_cum"))
        return F.max(F.when(covers, F.col("_n")))

    lower, upper = at(F.floor((F.col("_all") - 1) / 2)), at(F.floor(F.col("_all") / 2))
    aggs = [((lower + upper) / 2.0).cast("double").alias(median)]
    if peak is not None:
        aggs.append(F.max("_n").alias(peak))
    return cum.groupBy(*_EH).agg(*aggs)


def timing_signals(events: DataFrame) -> DataFrame:
    """Event count and the coefficient of variation of inter-event gaps (bots keep a steady beat)."""
    return event_signals(events).select(*KEYS, EVENTS_N, EVENT_GAP_CV)


def burst_signals(events: DataFrame) -> DataFrame:
    """Peaks in sliding 10-minute and 1-hour windows and per UTC day, against the entity's own medians."""
    return event_signals(events).select(
        *KEYS, PEAK_10MIN_EVENTS, PEAK_1H_EVENTS, PEAK_DAY_EVENTS, MEDIAN_DAY_EVENTS, DAY_BURST_RATIO,
        MEDIAN_HOUR_EVENTS, HOUR_BURST_RATIO)


def session_entities(sessions: DataFrame) -> DataFrame:
    """Sessions once per account and device, shuffled by entity, with ``_EH`` and ``_us``."""
    keep = ["event_id", EVENT_TIME, "ip_country", "ip_lat", "ip_lon", "tap_interval_cv"]
    return (_by_entity(sessions, SESSION_ENTITIES, keep).withColumn(_US, F.unix_micros(EVENT_TIME))
            .transform(_by_entity_hash))


def session_signals(sessions: DataFrame, conf: SignalConf) -> DataFrame:
    """Tap-cadence regularity per account and device (tap_interval_cv near 0 = machine-like)."""
    return session_geo_signals(sessions, conf).select(
        *KEYS, SESSIONS_N, TAP_CV_SESSIONS, TAP_CV_MEAN, TAP_CV_MIN, BOT_SESSION_SHARE)


def geo_signals(sessions: DataFrame, conf: SignalConf) -> DataFrame:
    """Impossible travel between consecutive geolocated sessions of an account or device."""
    return session_geo_signals(sessions, conf).select(
        *KEYS, DISTINCT_COUNTRIES, GEO_HOPS, IMPOSSIBLE_TRAVEL_N, MAX_TRAVEL_SPEED_KMH,
        FASTEST_HOP_KM, FASTEST_HOP_HOURS, FASTEST_HOP_FROM, FASTEST_HOP_TO)


def session_geo_signals(sessions: DataFrame, conf: SignalConf) -> DataFrame:
    """Session (tap cadence) and geography (impossible travel) signals in one aggregate over one shuffle.

    As two families each shuffled and aggregated the sessions on its own:
    column pruning gave their shuffles different columns, so Spark could not reuse one.
    """
    loc = F.col("ip_lat").isNotNull() & F.col("ip_lon").isNotNull()
    s = session_entities(sessions).withColumn("_loc", loc)
    # Un-located sessions sort first, so each located session's predecessor is the previous
    # located one (or an un-located row, which is not a hop) - no filter, no join, no reshuffle.
    w = _entity_window().orderBy("_loc", _US, "event_id")
    hops = (
        s.select(
            *_EH, *KEYS, "ip_lat", "ip_lon", "ip_country", _US, "_loc", "tap_interval_cv",
            _first_flag([*_EH, *KEYS, "ip_country"]).alias("_new_country"),
            F.coalesce(F.lag("_loc").over(w), F.lit(False)).alias("_loc0"),
            F.lag("ip_lat").over(w).alias("_lat0"),
            F.lag("ip_lon").over(w).alias("_lon0"),
            F.lag("ip_country").over(w).alias("_c0"),
            F.lag(_US).over(w).alias("_us0"),
        )
        .withColumn("_hop", F.col("_loc") & F.col("_loc0"))
        .withColumn("_km", _haversine_km(F.col("_lat0"), F.col("_lon0"), F.col("ip_lat"), F.col("ip_lon")))
        .withColumn("_h", F.greatest((F.col(_US) - F.col("_us0")) / HOUR_US,
                                     F.lit(conf.geo_min_gap_minutes / 60.0)))
        .withColumn("_kmh", F.col("_km") / F.col("_h"))
    )
    far = F.col("_hop") & (F.col("_km") >= conf.geo_min_distance_km)
    # max_by ignores null orderings, so only far hops compete.
    fastest = F.max_by(
        F.struct(F.col("_km").alias("km"), F.col("_h").alias("h"),
                 F.col("_c0").alias("c0"), F.col("ip_country").alias("c1")),
        F.when(far, F.col("_kmh")),
    )
    cv = F.col("tap_interval_cv")
    # max_by of a struct makes this a sort aggregate: keyed like the window, it needs no sort of its own.
    agg = hops.groupBy(*_EH, *KEYS).agg(
        F.count(F.lit(1)).alias(SESSIONS_N),
        F.count(cv).alias(TAP_CV_SESSIONS),
        F.avg(cv).alias(TAP_CV_MEAN),
        F.min(cv).alias(TAP_CV_MIN),
        _ratio(F.count(F.when(cv < conf.bot_tap_cv, 1)), F.count(cv)).alias(BOT_SESSION_SHARE),
        F.sum("_new_country").cast("bigint").alias(DISTINCT_COUNTRIES),
        F.count(F.when(F.col("_hop"), 1)).alias(GEO_HOPS),
        F.count(F.when(far & (F.col("_kmh") > conf.impossible_speed_kmh), 1)).alias(IMPOSSIBLE_TRAVEL_N),
        F.max(F.when(far, F.col("_kmh"))).alias(MAX_TRAVEL_SPEED_KMH),
        fastest.alias("_fast"),
    )
    return agg.select(
        *KEYS, SESSIONS_N, TAP_CV_SESSIONS, TAP_CV_MEAN, TAP_CV_MIN, BOT_SESSION_SHARE,
        DISTINCT_COUNTRIES, GEO_HOPS, IMPOSSIBLE_TRAVEL_N, MAX_TRAVEL_SPEED_KMH,
        F.col("_fast.km").alias(FASTEST_HOP_KM),
        F.col("_fast.h").alias(FASTEST_HOP_HOURS),
        F.col("_fast.c0").alias(FASTEST_HOP_FROM),
        F.col("_fast.c1").alias(FASTEST_HOP_TO),
    )


def _is_tiny(conf: SignalConf) -> Column:
    if not conf.tiny_amount:
        return F.lit(False)
    thresholds = F.create_map(*[x for cur, v in sorted(conf.tiny_amount.items())
                                for x in (F.lit(cur), F.lit(float(v)))])
    # A currency without a threshold is never "tiny" (null comparison -> false).
    return F.coalesce(F.col("amount").cast("double") <= thresholds[F.col("currency")], F.lit(False))


def card_testing_signals(payments: DataFrame, conf: SignalConf) -> DataFrame:
    """Attempts, declines, tiny auths, card/BIN spread and burst density per account/device/IP/card/merchant.

    Rows are shuffled once, by the entity's hashes (``_by_entity_hash``); the
    window, both aggregates and the join that brings them together all key
    on them, so none of them shuffles again.
    """
    p = payments.select(
        "account_id", "card_token", "card_bin", "merchant_id", "device_id", "ip",
        F.unix_micros(EVENT_TIME).alias(_US),
        (F.col("status") == "declined").cast("int").alias("_declined"),
        _is_tiny(conf).cast("int").alias("_tiny"),
    )
    e = (_by_entity(p, CARD_TESTING_ENTITIES,
                    ["account_id", "card_token", "card_bin", "merchant_id", "device_id", "ip",
                     _US, "_declined", "_tiny"])
         .transform(_by_entity_hash))
    w10 = _entity_window().orderBy(_US).rangeBetween(0, 10 * MINUTE_US - 1)
    volume = e.select(*_EH, *KEYS, _US, "_declined", "_tiny",
                      F.count(F.lit(1)).over(w10).alias("_c10")).groupBy(*_EH, *KEYS).agg(
        F.count(F.lit(1)).alias(ATTEMPTS),
        F.sum("_declined").cast("bigint").alias(DECLINED),
        _ratio(F.sum("_declined"), F.count(F.lit(1))).alias(DECLINE_RATE),
        F.avg("_tiny").cast("double").alias(TINY_SHARE),
        F.max("_c10").alias(PEAK_10MIN_ATTEMPTS),
        (F.max("_c10") / 10.0).alias(BURST_ATTEMPTS_PER_MIN),
        ((F.max(_US) - F.min(_US)) / MINUTE_US).cast("double").alias(ATTEMPT_SPAN_MINUTES),
    )

    def spread(c: str, name: str) -> Column:
        # An entity is one distinct value of its own column (entity ids are never null).
        own = (F.col(ENTITY_TYPE) == _OWN_TYPE[c]).cast("int") if c in _OWN_TYPE else F.lit(0)
        return F.coalesce(F.col(name), F.lit(0)) + own

    return volume.join(_spread(e), list(_EH), "left").select(
        *KEYS, ATTEMPTS, DECLINED, DECLINE_RATE, TINY_SHARE,
        *[spread(c, name).cast("bigint").alias(name) for c, name in _SPREAD.items()],
        TOP_BIN_SHARE, PEAK_10MIN_ATTEMPTS, BURST_ATTEMPTS_PER_MIN, ATTEMPT_SPAN_MINUTES,
    )


# Distinct values per entity: column -> signal.
_SPREAD = {"card_token": DISTINCT_CARDS, "card_bin": DISTINCT_BINS, "merchant_id": DISTINCT_MERCHANTS,
           "account_id": DISTINCT_ACCOUNTS, "device_id": DISTINCT_DEVICES, "ip": DISTINCT_IPS}
# The entity type whose own id a spread column holds: that column has one value per entity.
_OWN_TYPE = {c: t for t, c in CARD_TESTING_ENTITIES.items()}


def _spread(e: DataFrame) -> DataFrame:
    """Distinct values of the other columns and the top-BIN share per entity, keyed by ``_EH``.

    Hash aggregation over (entity, column, value) rows -- five per payment and
    entity, 120M at 10M events, the largest aggregate of the stage. Its key
    is all fixed-width: the entity's two hashes, the column's index and a
    64-bit hash of the value. Against the same key with the entity and value
    strings, that cut the card-testing family from 170.7 to 148.1 s at 10M
    events (task CPU 306 -> 259 s). Two different values of one entity's
    column share a hash with probability about k^2 / 2^65 for k values
    (~3e-8 for a merchant with a million accounts); the entity key has 96
    bits. ``e`` is partitioned by the entity already, so neither groupBy
    shuffles; a window per column (an exact count-distinct that also reuses
    the shuffle) sorts the whole table once per column, which measured twice
    as slow at 1M events. An entity's own column is left out (one value,
    added by the caller): a sixth fewer rows.
    """
    def value(c: str) -> Column:
        v = F.when(F.col(c).isNotNull(), F.xxhash64(F.col(c).cast("string")))
        return F.when(F.col(ENTITY_TYPE) != _OWN_TYPE[c], v) if c in _OWN_TYPE else v

    pairs = F.array(*[F.struct(F.lit(i).alias("_col"), value(c).alias("_val")) for i, c in enumerate(_SPREAD)])
    per_value = (
        e.select(*_EH, F.explode(pairs).alias("_x"))
        .select(*_EH, "_x._col", "_x._val")
        .where(F.col("_val").isNotNull())
        .groupBy(*_EH, "_col", "_val").agg(F.count(F.lit(1)).alias("_n"))
    )
    is_bin = F.col("_col") == list(_SPREAD).index("card_bin")
    return per_value.groupBy(*_EH).agg(
        *[F.count(F.when(F.col("_col") == i, 1)).alias(name) for i, name in enumerate(_SPREAD.values())],
        _ratio(F.max(F.when(is_bin, F.col("_n"))), F.sum(F.when(is_bin, F.col("_n")))).alias(TOP_BIN_SHARE),
    )


def mule_signals(transfers: DataFrame, conf: SignalConf) -> DataFrame:
    """Fan-in/fan-out, pass-through ratio and dwell time per account, from approved transfers.

    Pass-through is FIFO money matching done with running sums. Per (account,
    currency), order inflows and outflows in time (inflows first on ties) and
    take the smallest opening balance ``B0`` that never lets the balance go
    negative: ``B0 = max(0, max over the sequence of (cum_out - cum_in))``.
    Outflows spend the opening balance first, then inflows in arrival order,
    so inflow ``i`` (amount ``a``, preceded by inflows summing to ``I``) has
    been forwarded by time ``t`` by ``clamp(cum_out(t) - B0 - I, 0, a)``.
    Evaluated at ``t_i + pass_through_hours`` and summed over inflows, divided
    by total inflow, that is the pass-through ratio. Inflows too close to the
    window end to have had the full period count with what left so far.
    """
    t = transfers.where(F.col("status") == "approved")
    zero = F.lit(0).cast("decimal(18,2)")
    amount = F.col("amount").cast("decimal(18,2)")
    flow_cols = ["event_id", "currency", F.unix_micros(EVENT_TIME).alias(_US)]
    # Each transfer twice: as the receiver's inflow and the sender's outflow. Shuffled once by
    # account; every window and aggregate below is keyed by (account, ...) and reuses it.
    flows = t.select(F.col("dst_account_id").alias(ENTITY_ID), F.col("src_account_id").alias("_peer"),
                     *flow_cols, F.lit(0).alias("_dir"), amount.alias("_in"), zero.alias("_out")).unionByName(
        t.select(F.col("src_account_id").alias(ENTITY_ID), F.col("dst_account_id").alias("_peer"),
                 *flow_cols, F.lit(1).alias("_dir"), zero.alias("_in"), amount.alias("_out"))
    ).repartition(ENTITY_ID)
    part = Window.partitionBy(ENTITY_ID, "currency")
    seq = part.orderBy(_US, "_dir", "event_id")
    upto = seq.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    horizon_us = int(round(conf.pass_through_hours * HOUR_US))
    staged = (
        flows.withColumn("_new_peer", _first_flag([ENTITY_ID, "_dir", "_peer"]))
        .withColumn("_cin", F.sum("_in").over(upto))
        .withColumn("_cout", F.sum("_out").over(upto))
        .withColumn("_out_h", F.sum("_out").over(part.orderBy(_US).rangeBetween(0, horizon_us)))
        .withColumn("_next_out", F.min(F.when(F.col("_dir") == 1, F.col(_US))).over(
            seq.rowsBetween(Window.currentRow, Window.unboundedFollowing)))
    )
    staged = staged.withColumn(
        "_b0", F.greatest(F.max(F.col("_cout") - F.col("_cin")).over(part), zero))
    is_in = F.col("_dir") == 0
    # On an inflow row _cout counts only outflows strictly before it (inflows sort first on ties);
    # _out_h adds those in [t_i, t_i + H].
    forwarded = F.greatest(zero, F.least(
        F.col("_in"), F.col("_cout") + F.col("_out_h") - F.col("_b0") - (F.col("_cin") - F.col("_in"))))
    dwell_h = (F.col("_next_out") - F.col(_US)) / HOUR_US
    per_cur = staged.groupBy(ENTITY_ID, "currency").agg(
        F.count(F.when(is_in, 1)).alias("_n_in"),
        F.count(F.when(~is_in, 1)).alias("_n_out"),
        F.sum(F.when(is_in, F.col("_new_peer"))).alias("_fan_in"),
        F.sum(F.when(~is_in, F.col("_new_peer"))).alias("_fan_out"),
        F.sum("_in").alias("_sum_in"),
        F.sum("_out").alias("_sum_out"),
        F.sum(F.when(is_in, forwarded)).alias("_fwd"),
        F.median(F.when(is_in, dwell_h)).alias("_dwell"),
    )
    account = Window.partitionBy(ENTITY_ID)
    main = account.orderBy(F.desc("_n_in"), F.desc("_n_out"), "currency")
    totals = [F.coalesce(F.sum(c).over(account), F.lit(0)).cast("bigint").alias(name)
              for c, name in (("_n_in", INFLOW_N), ("_n_out", OUTFLOW_N), ("_fan_in", FAN_IN),
                              ("_fan_out", FAN_OUT))]
    return per_cur.select("*", *totals, F.row_number().over(main).alias("_rank")).where(
        F.col("_rank") == 1
    ).select(
        F.lit("account").alias(ENTITY_TYPE),
        ENTITY_ID,
        INFLOW_N, OUTFLOW_N, FAN_IN, FAN_OUT,
        F.col("currency").alias(FLOW_CURRENCY),
        F.col("_sum_in").cast("double").alias(INFLOW_AMOUNT),
        F.col("_sum_out").cast("double").alias(OUTFLOW_AMOUNT),
        F.when(F.col("_sum_in") > 0, _ratio(F.col("_fwd"), F.col("_sum_in"))).alias(PASS_THROUGH_RATIO),
        F.col("_dwell").cast("double").alias(MEDIAN_DWELL_HOURS),
    )


def account_profile(accounts: DataFrame, ds: dt.date) -> DataFrame:
    """Account age (whole days at the end of ``ds``) and KYC level, keyed like the signals."""
    end_us = int(dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC).timestamp()) * 1_000_000
    age = F.floor((F.lit(end_us) - F.unix_micros("created_at")) / DAY_US).cast("int")
    return accounts.select(
        F.lit("account").alias(ENTITY_TYPE),
        F.col("account_id").alias(ENTITY_ID),
        age.alias(ACCOUNT_AGE_DAYS),
        F.col(KYC_LEVEL).cast("int").alias(KYC_LEVEL),
    )


# --------------------------------------------------------------------------- assembly


def combine_families(activity: list[DataFrame], attributes: list[DataFrame] = ()) -> DataFrame:
    """Fold per-family frames (each unique per key) into one wide row per entity: one shuffle.

    ``attributes`` (e.g. the account profile) only decorate entities that some ``activity``
    frame has, so dormant accounts do not enter the output.
    """
    marked = [f.withColumn("_active", F.lit(True)) for f in activity] + list(attributes)
    stacked = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), marked)
    cols = [c for c in stacked.columns if c not in KEYS]
    # Each key has at most one non-null value per column, so max() just picks it.
    return (
        stacked.groupBy(*KEYS).agg(*[F.max(c).alias(c) for c in cols])
        .where(F.col("_active"))
        .drop("_active")
    )


def entity_signals(
    spark: SparkSession, cfg: RingfenceConfig, tables: dict[str, DataFrame], ds: dt.date, lookback_days: int
) -> DataFrame:
    """One row per (entity_type, entity_id) active in the window, with every signal in ``SIGNAL_COLUMNS``
    plus ``signal_reasons``. Entities without events, transfers or sessions in the window are left out.
    """
    conf = cfg.scoring.signals
    payments = events_in_window(_table(spark, tables, "payments"), ds, lookback_days)
    transfers = events_in_window(_table(spark, tables, "transfers"), ds, lookback_days)
    sessions = events_in_window(_table(spark, tables, "sessions"), ds, lookback_days)
    accounts = _table(spark, tables, "accounts")

    combined = combine_families(
        [
            event_signals(activity_events(payments, transfers)),
            session_geo_signals(sessions, conf),
            card_testing_signals(payments, conf),
            mule_signals(transfers, conf),
        ],
        [account_profile(accounts, ds)],
    )
    typed = combined.select(*[F.col(n).cast(t).alias(n) for n, t in SIGNAL_COLUMNS])
    return signal_reasons(typed, cfg)


# --------------------------------------------------------------------------- reasons


def _pct(c: Column) -> Column:
    return F.round(c * 100).cast("int")


def _count_of(n: Column, noun: str) -> Column:
    """'1 BIN', '2 BINs', '1,204 senders'."""
    return F.format_string("%,d %s", n, F.when(n == 1, F.lit(noun)).otherwise(F.lit(noun + "s")))


def _duration(minutes: Column) -> Column:
    return (
        F.when(minutes < 1, F.lit("under a minute"))
        .when(minutes < 120, F.format_string("%.0f minutes", minutes))
        .when(minutes < 48 * 60, F.format_string("%.1f hours", minutes / 60))
        .otherwise(F.format_string("%.1f days", minutes / (24 * 60)))
    )


def signal_reasons(signals: DataFrame, cfg: RingfenceConfig) -> DataFrame:
    """Add ``signal_reasons`` (array<string>): one specific text per strong signal, numbers included."""
    c = cfg.scoring.signals
    col = F.col
    noun = F.when(col(ENTITY_TYPE) == "ip", F.lit("IP")).otherwise(col(ENTITY_TYPE))
    many_attempts = col(ATTEMPTS) >= c.reason_min_attempts
    dwell = F.when(col(MEDIAN_DWELL_HOURS).isNotNull(),
                   F.format_string("median dwell %.1f h", col(MEDIAN_DWELL_HOURS))).otherwise("no dwell")
    texts = [
        F.when(many_attempts & (col(DECLINE_RATE) >= c.reason_decline_rate), F.format_string(
            "%d%% of %,d card attempts declined within %s",
            _pct(col(DECLINE_RATE)), col(ATTEMPTS), _duration(col(ATTEMPT_SPAN_MINUTES)))),
        F.when(many_attempts & (col(TINY_SHARE) >= c.reason_tiny_share), F.format_string(
            "%d%% of %,d card attempts were tiny authorisations", _pct(col(TINY_SHARE)), col(ATTEMPTS))),
        # Many cards at one merchant is normal trade, so this reason is for the tester's side only.
        F.when(col(ENTITY_TYPE).isin("account", "device", "ip")
               & (col(DISTINCT_CARDS) >= c.reason_distinct_cards), F.concat(
            F.format_string("%,d distinct cards from %s on one %s",
                            col(DISTINCT_CARDS), _count_of(col(DISTINCT_BINS), "BIN"), noun),
            F.when(col(TOP_BIN_SHARE) >= c.reason_top_bin_share, F.format_string(
                " (%d%% of attempts on one BIN)", _pct(col(TOP_BIN_SHARE)))).otherwise(F.lit("")))),
        F.when((col(ENTITY_TYPE) == "card") & (col(DISTINCT_MERCHANTS) >= c.reason_merchants_per_card),
               F.format_string("card tried at %,d merchants (%,d attempts)",
                               col(DISTINCT_MERCHANTS), col(ATTEMPTS))),
        F.when((col(TAP_CV_SESSIONS) >= c.reason_bot_min_sessions) & (col(TAP_CV_MEAN) < c.bot_tap_cv),
               F.format_string("bot-like taps: tap-interval CV %.2f over %,d sessions",
                               col(TAP_CV_MEAN), col(TAP_CV_SESSIONS))),
        F.when((col(EVENTS_N) >= c.reason_gap_min_events) & (col(EVENT_GAP_CV) < c.reason_gap_cv),
               F.format_string("machine-like timing: interval CV %.2f over %,d events",
                               col(EVENT_GAP_CV), col(EVENTS_N))),
        F.when((col(PEAK_DAY_EVENTS) >= c.reason_burst_min_events)
               & (col(DAY_BURST_RATIO) >= c.reason_day_burst_ratio),
               F.format_string("burst: %,d events in one day against a median of %.1f per active day",
                               col(PEAK_DAY_EVENTS), col(MEDIAN_DAY_EVENTS))),
        F.when(col(IMPOSSIBLE_TRAVEL_N) >= 1, F.format_string(
            "impossible travel: %,.0f km in %.1f h (%s→%s)",
            col(FASTEST_HOP_KM), col(FASTEST_HOP_HOURS),
            F.coalesce(col(FASTEST_HOP_FROM), F.lit("?")), F.coalesce(col(FASTEST_HOP_TO), F.lit("?")))),
        F.when((col(INFLOW_N) >= c.reason_pass_through_min_inflows)
               & (col(PASS_THROUGH_RATIO) >= c.reason_pass_through),
               F.format_string(f"forwarded %d%% of inflows within {c.pass_through_hours:g} h "
                               "(%s; %s from %s)", _pct(col(PASS_THROUGH_RATIO)), dwell,
                               _count_of(col(INFLOW_N), "inflow"), _count_of(col(FAN_IN), "sender"))),
        F.when(col(FAN_IN) >= c.reason_fan,
               F.format_string("fan-in: received transfers from %,d distinct senders", col(FAN_IN))),
        F.when(col(FAN_OUT) >= c.reason_fan,
               F.format_string("fan-out: sent transfers to %,d distinct receivers", col(FAN_OUT))),
        F.when((col(ACCOUNT_AGE_DAYS) <= c.reason_new_account_days)
               & (col(INFLOW_N) >= c.reason_new_account_min_inflows),
               F.format_string("new account: %d days old (KYC level %s) with %,d incoming transfers",
                               col(ACCOUNT_AGE_DAYS),
                               F.coalesce(col(KYC_LEVEL).cast("string"), F.lit("unknown")), col(INFLOW_N))),
    ]
    reasons = F.filter(F.array(*texts), lambda x: x.isNotNull())
    return signals.withColumn(SIGNAL_REASONS, reasons)
