"""Events of the synthetic world: the legitimate background (per day, vectorised) and the
planted flows (mule rings, card-testing rings, payroll, dues, marketplaces) for the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graph.generate_common import (
    APP_OPEN,
    DAY_US,
    HOUR_US,
    KRW,
    KRW_PER_UNIT,
    LOGIN,
    MINUTE_US,
    PASSWORD_RESET,
    PICK_LATER,
    SECOND_US,
    SIGNUP,
    RowSink,
    rng_for,
)
from graph.generate_population import World

# Share of activity per UTC hour: Korean evenings (KST = UTC+9) are the peak.
_KST_HOURLY = np.array([3.0, 2.0, 1.2, 0.7, 0.5, 0.5, 0.8, 1.8, 3.0, 3.4, 3.6, 3.8,
                        4.8, 4.5, 3.9, 3.9, 4.0, 4.3, 4.9, 5.6, 6.2, 6.6, 6.0, 4.6])
HOUR_P = np.roll(_KST_HOURLY, -9) / _KST_HOURLY.sum()
HOUR_CDF = np.cumsum(HOUR_P)
# Monday .. Sunday: game and content spending rises at the weekend.
WEEKDAY_FACTOR = np.array([0.95, 0.94, 0.96, 0.98, 1.06, 1.2, 1.16])


def time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    hour = np.minimum(np.searchsorted(HOUR_CDF, rng.random(n)), 23)
    return hour * HOUR_US + rng.integers(0, HOUR_US, n)


def human_cv(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tap-interval coefficient of variation of people: mostly 0.3-1.2."""
    return np.round(np.clip(rng.lognormal(np.log(0.62), 0.32, n), 0.16, 1.8), 4)


def bot_cv(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.uniform(0.004, 0.07, n), 4)


def krw(rng: np.random.Generator, n: int, median: float, sigma: float, lo: float, hi: float,
        step: int) -> np.ndarray:
    """Lognormal KRW amounts rounded to ``step`` won, as minor units (x100)."""
    a = np.clip(rng.lognormal(np.log(median), sigma, n), lo, hi)
    return (np.maximum(np.round(a / step), 1) * step * 100).astype(np.int64)


def pick_device_ip(w: World, acc: np.ndarray, rng: np.random.Generator,
                   day: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Device and IP of an account's event: own devices, home broadband, carrier NAT or office,
    the ring's proxy exits for ring accounts, foreign networks for travellers abroad."""
    n = len(acc)
    dev = w.dev1[acc].copy()
    d2 = w.dev2[acc]
    use2 = (d2 >= 0) & (rng.random(n) < 0.3)
    dev[use2] = d2[use2]
    ch = rng.random(n)
    car = w.carrier[acc]
    mobile = w.cgnat_start[car] + (rng.random(n) * w.cgnat_count[car]).astype(np.int64)
    ip = np.where(ch < 0.45, w.home_ip[acc], mobile)
    off = w.office_ip[acc]
    at_office = (off >= 0) & (ch > 0.80)
    ip[at_office] = off[at_office]
    px, pc = w.proxy_start[acc], w.proxy_count[acc]
    use_px = (px >= 0) & (rng.random(n) < 0.75)
    ip[use_px] = px[use_px] + (rng.random(use_px.sum()) * pc[use_px]).astype(np.int64)
    if day is not None:
        away = (w.trip_start[acc] <= day) & (day < w.trip_end[acc])
        if away.any():
            c = w.trip_country[acc[away]]
            ip[away] = w.travel_start[c] + (rng.random(away.sum()) * w.travel_count[c]).astype(np.int64)
    return dev, ip


def _events_per_account(w: World, rate: np.ndarray, rng, day_start: int, factor: float) -> np.ndarray:
    alive = w.created_us < day_start + DAY_US - HOUR_US
    k = rng.poisson(rate * factor * alive)
    return np.repeat(np.arange(w.n, dtype=np.int64), k)


def _after_creation(w: World, acc: np.ndarray, t: np.ndarray, day_start: int) -> np.ndarray:
    """Accounts opened today act only after opening."""
    floor = w.created_us[acc] + MINUTE_US
    late = floor > t
    t = t.copy()
    t[late] = np.minimum(floor[late] + (t[late] - day_start) // 4, day_start + DAY_US - 1)
    return t


def background_day(w: World, day: int) -> dict[str, dict[str, np.ndarray]]:
    """Legitimate behaviour of every account (ring accounts included: camouflage) on one day."""
    rng = rng_for(w.seed, 2, day)
    day_start = w.start_us + day * DAY_US
    weekday = int(((day_start // DAY_US) + 3) % 7)  # 1970-01-01 was a Thursday
    f = WEEKDAY_FACTOR[weekday]

    # payments at merchants
    acc = _events_per_account(w, w.pay_rate, rng, day_start, f)
    n = len(acc)
    t = _after_creation(w, acc, day_start + time_of_day(rng, n), day_start)
    u = rng.random(n)
    merch = np.where(u < 0.3, w.fav1[acc], np.where(u < 0.45, w.fav2[acc], w.sample_merchants(rng, n)))
    card = w.card1[acc].copy()
    c2 = w.card2[acc]
    use2 = (c2 >= 0) & (rng.random(n) < 0.25)
    card[use2] = c2[use2]
    amt = krw(rng, n, 5500, 0.85, 500, 500_000, 100)
    cur = np.full(n, KRW, dtype=np.int8)
    dev, ip = pick_device_ip(w, acc, rng, day)
    away = (w.trip_start[acc] <= day) & (day < w.trip_end[acc]) & (rng.random(n) < 0.6)
    if away.any():
        cur[away] = w.travel_currency[w.trip_country[acc[away]]]
        rate = np.array([KRW_PER_UNIT[c] for c in range(len(KRW_PER_UNIT))])[cur[away]]
        amt[away] = np.maximum(np.round(amt[away] / rate), 1).astype(np.int64)
    dec = rng.random(n) < np.where(cur == KRW, 0.03, 0.07)
    dev[rng.random(n) < 0.003] = -1  # web checkouts without a device fingerprint
    payments = dict(t=t, acc=acc, card=card, merch=merch, amt=amt, cur=cur, dec=dec, dev=dev, ip=ip)

    # friend-to-friend transfers inside social circles
    src = _events_per_account(w, w.xfer_rate, rng, day_start, f)
    src = src[w.circle_size[src] >= 2]
    n = len(src)
    off = 1 + (rng.random(n) * (w.circle_size[src] - 1)).astype(np.int64)
    dst = w.circle_order[w.circle_start[src] + (w.circle_pos[src] + off) % w.circle_size[src]]
    t = _after_creation(w, src, day_start + time_of_day(rng, n), day_start)
    dev, ip = pick_device_ip(w, src, rng, day)
    transfers = dict(t=t, src=src, dst=dst, amt=krw(rng, n, 15_000, 0.9, 1000, 1_000_000, 1000),
                     cur=np.full(n, KRW, dtype=np.int8), dec=rng.random(n) < 0.015, dev=dev, ip=ip)

    # sessions: logins and app opens, plus sign-ups of accounts opened today
    acc = _events_per_account(w, w.sess_rate, rng, day_start, f)
    new = np.flatnonzero((w.created_us >= day_start) & (w.created_us < day_start + DAY_US))
    n = len(acc)
    t = np.concatenate([_after_creation(w, acc, day_start + time_of_day(rng, n), day_start),
                        w.created_us[new]])
    etype = np.concatenate([rng.choice([APP_OPEN, LOGIN, PASSWORD_RESET], n, p=[0.68, 0.305, 0.015]),
                            np.full(len(new), SIGNUP)]).astype(np.int8)
    acc = np.concatenate([acc, new])
    n = len(acc)
    dev, ip = pick_device_ip(w, acc, rng, day)
    cv = np.where(rng.random(n) < w.bot_p[acc], bot_cv(rng, n), human_cv(rng, n))
    cv[(rng.random(n) < 0.04) & (etype == APP_OPEN)] = np.nan  # sessions without touches
    sessions = dict(t=t, acc=acc, etype=etype, dev=dev, ip=ip, cv=cv)
    return {"payments": payments, "transfers": transfers, "sessions": sessions}


# --- planted flows -----------------------------------------------------------


@dataclass
class Planted:
    payments: RowSink = field(default_factory=lambda: RowSink("payments"))
    transfers: RowSink = field(default_factory=lambda: RowSink("transfers"))
    sessions: RowSink = field(default_factory=lambda: RowSink("sessions"))
    victims: set = field(default_factory=set)
    # pass-through accounts of mule rings (receive and forward), for tests and summaries
    pass_through: set = field(default_factory=set)
    # per ring: first time it acted (labels follow detection of activity)
    first_activity: dict = field(default_factory=dict)


class _Flows:
    def __init__(self, w: World, rng: np.random.Generator, out: Planted):
        self.w, self.rng, self.out = w, rng, out
        self.end = w.end_us
        # victims: established legitimate accounts, never the look-alike businesses
        established = np.flatnonzero(w.created_us[: w.n_legit] < w.start_us)
        biz = [a for a, _ in w.payroll] + [c for c, _, _ in w.rent] + [m for m, _, _ in w.markets]
        self.victim_pool = established[~np.isin(established, biz)]

    def transfer(self, t, src, dst, amt, dec=False) -> None:
        self.out.transfers.add(t=t, src=src, dst=dst, amt=amt, cur=KRW, dec=dec, dev=PICK_LATER, ip=PICK_LATER)

    def dwell(self, n: int = 1) -> np.ndarray:
        """Mules forward fast: median ~2 h, from 10 minutes to a day."""
        return np.clip(self.rng.lognormal(np.log(2 * HOUR_US), 0.9, n), 10 * MINUTE_US, 24 * HOUR_US
                       ).astype(np.int64)

    def forward_time(self, t_in: int) -> int:
        t = min(t_in + int(self.dwell()[0]), self.end - int(self.rng.integers(1, 60)) * MINUTE_US)
        return max(t, t_in + MINUTE_US)

    def victims(self, n: int) -> np.ndarray:
        v = self.victim_pool[self.rng.integers(0, len(self.victim_pool), n)]
        self.out.victims.update(int(x) for x in v)
        return v


def _margin(rng) -> float:
    return float(rng.uniform(0.03, 0.10))


def _cash_out(f: _Flows, acc: int, t: int, amount: int) -> None:
    """Cash-out account spends the takings on resellable goods at big merchants."""
    rng, w = f.rng, f.w
    n = int(rng.integers(1, 4))
    parts = np.maximum((amount * 0.9 / n) // 10_000 * 10_000, 1_000_000)  # minor units
    times = t + np.cumsum(rng.integers(20 * MINUTE_US, 12 * HOUR_US, n))
    keep = times < f.end
    if not keep.any():
        return
    acc_a = np.full(keep.sum(), acc)
    merch = rng.integers(0, min(20, w.n_merchants), keep.sum())
    f.out.payments.add(t=times[keep], acc=acc_a, card=w.card1[acc_a], merch=merch,
                       amt=np.full(keep.sum(), parts, dtype=np.int64), cur=KRW,
                       dec=rng.random(keep.sum()) < 0.05, dev=PICK_LATER, ip=PICK_LATER)


def _victim_inflows(f: _Flows, mule: int, t0: int, passes_on: bool = True) -> tuple[int, int]:
    """2-6 unrelated victims pay one mule within a few hours; returns (last time, total)."""
    rng = f.rng
    n = int(rng.integers(2, 7))
    times = t0 + np.sort(rng.integers(0, 6 * HOUR_US, n))
    amts = (np.round(np.clip(rng.lognormal(np.log(120_000), 0.7, n), 10_000, 2_000_000) / 1000) * 1000 * 100
            ).astype(np.int64)
    f.transfer(times, f.victims(n), np.full(n, mule), amts)
    if passes_on:
        f.out.pass_through.add(int(mule))
    return int(times[-1]), int(amts.sum())


def _hop(f: _Flows, src: int, dst: int, t_in: int, amount: int) -> tuple[int, int]:
    t = f.forward_time(t_in)
    if f.rng.random() < 0.7:  # mules open the app to move the money (a person, not a bot)
        f.out.sessions.add(t=t - int(f.rng.integers(1, 15)) * MINUTE_US, acc=src, etype=LOGIN,
                           dev=PICK_LATER, ip=PICK_LATER, cv=human_cv(f.rng, 1))
    out = int(amount * (1 - _margin(f.rng))) // 100 * 100
    f.transfer(t, src, dst, out)
    return t, out


def _episode_starts(f: _Flows, ring, n: int) -> np.ndarray:
    w, rng = f.w, f.rng
    lo = w.start_us + ring.start_day * DAY_US
    hi = max(lo + HOUR_US, w.end_us - 20 * HOUR_US)
    return np.sort(rng.integers(lo, hi, n))


def plant_mule_ring(f: _Flows, ring) -> None:
    rng = f.rng
    m = rng.permutation(ring.members)
    n_ep = int(rng.integers(1, 4))
    starts = _episode_starts(f, ring, n_ep)
    f.out.first_activity[ring.ring_id] = int(starts[0])
    if ring.typology == "fan_in_out":
        n_cash = max(1, len(m) // 12)
        cash, mules = m[:n_cash], m[n_cash:]
        got = {int(c): (0, 0) for c in cash}
        for t0 in starts:
            for mule in mules:
                if rng.random() < 0.3:
                    continue  # not every mule is used in every episode
                t_last, total = _victim_inflows(f, int(mule), int(t0 + rng.integers(0, 3 * HOUR_US)))
                c = int(rng.choice(cash))
                t, out = _hop(f, int(mule), c, t_last, total)
                got[c] = (max(got[c][0], t), got[c][1] + out)
        for c, (t, total) in got.items():
            if total:
                _cash_out(f, c, t, total)
    elif ring.typology in ("layering", "cycle"):
        origin = int(m[0])
        cash = int(m[-1])
        middle = m[1:-1] if ring.typology == "layering" else m[1:]
        chains = np.array_split(middle, max(1, int(np.ceil(len(middle) / rng.integers(3, 7)))))
        for t0 in starts:
            # a cycle's origin also receives the money coming back round: not a plain pass-through
            t_last, total = _victim_inflows(f, origin, int(t0), passes_on=ring.typology == "layering")
            for chain in chains:
                share = total // len(chains)
                path = [origin, *map(int, chain), origin if ring.typology == "cycle" else cash]
                t, amt = t_last, share
                for a, b in zip(path[:-1], path[1:], strict=True):
                    if a != origin:
                        f.out.pass_through.add(a)
                    t, amt = _hop(f, a, b, t, amt)
                _cash_out(f, path[-1], t, amt)
    elif ring.typology == "scatter_gather":
        source, sink, middle = int(m[0]), int(m[-1]), m[1:-1]
        for t0 in starts:
            t_last, total = _victim_inflows(f, source, int(t0))
            k = int(min(len(middle), rng.integers(2, 9)))
            mids = rng.choice(middle, k, replace=False)
            share = int(total * (1 - _margin(rng))) // k // 100 * 100
            t_sink = t_last
            for mid in mids:
                t = f.forward_time(t_last)
                f.transfer(t, source, int(mid), share)
                t2, _ = _hop(f, int(mid), sink, t, share)
                f.out.pass_through.add(int(mid))
                t_sink = max(t_sink, t2)
            _cash_out(f, sink, t_sink, share * k)
    else:
        raise ValueError(ring.typology)


def _card_attempts(f: _Flows, ring, times: np.ndarray, cards: np.ndarray, merch: np.ndarray,
                   live: np.ndarray) -> None:
    """Tiny authorisations on stolen cards: dead cards are declined, live ones pass."""
    rng, w = f.rng, f.w
    n = len(times)
    acc = ring.members[np.arange(n) % len(ring.members)]
    dev = w.dev1[acc]
    ip = ring.proxy_ips[rng.integers(0, len(ring.proxy_ips), n)]
    amt = (rng.choice([100, 300, 500, 1000], n, p=[0.3, 0.2, 0.3, 0.2]) * 100).astype(np.int64)
    dec = ~live | (rng.random(n) < 0.08)
    f.out.payments.add(t=times, acc=acc, card=cards, merch=merch, amt=amt, cur=KRW, dec=dec, dev=dev, ip=ip)


def _bot_sessions(f: _Flows, ring, times: np.ndarray, cv_hi: float = 0.07) -> None:
    rng, w = f.rng, f.w
    n = len(times)
    acc = ring.members[rng.integers(0, len(ring.members), n)]
    etype = rng.choice([LOGIN, APP_OPEN], n, p=[0.6, 0.4])
    ip = ring.proxy_ips[rng.integers(0, len(ring.proxy_ips), n)]
    f.out.sessions.add(t=times, acc=acc, etype=etype, dev=w.dev1[acc], ip=ip,
                       cv=np.round(rng.uniform(0.004, cv_hi, n), 4))


def plant_card_testing_ring(f: _Flows, ring) -> None:
    rng, w = f.rng, f.w
    cards = rng.permutation(ring.cards)
    live_card = rng.random(len(cards)) < rng.uniform(0.08, 0.25)
    tail = np.arange(w.n_merchants // 5, w.n_merchants)
    passed: list[tuple[int, int]] = []  # (card, time) of approved tests
    if ring.typology == "bot_burst":
        n_bursts = int(rng.integers(1, 4))
        days = np.sort(rng.choice(np.arange(ring.start_day, w.days), min(n_bursts, w.days - ring.start_day),
                                  replace=False))
        groups = np.array_split(np.arange(len(cards)), len(days))
        for day, g in zip(days, groups, strict=True):
            # a retry or two on dead cards, machine-regular spacing of a few seconds
            tries = np.where(live_card[g], 1, rng.integers(1, 3, len(g)))
            idx = np.repeat(g, tries)
            n = len(idx)
            step = int(rng.integers(2, 9)) * SECOND_US
            t0 = w.start_us + int(day) * DAY_US + int(rng.integers(0, DAY_US - n * step - HOUR_US))
            times = t0 + np.arange(n) * step + rng.integers(0, step // 10 + 1, n)
            merchants = rng.choice(tail, int(rng.integers(1, 4)), replace=False)
            _bot_sessions(f, ring, t0 - rng.integers(1, 10, len(ring.members)) * MINUTE_US)
            _bot_sessions(f, ring, np.sort(rng.integers(t0, times[-1] + 1, max(2, n // 20))))
            live = live_card[idx]
            _card_attempts(f, ring, times, cards[idx], merchants[rng.integers(0, len(merchants), n)], live)
            first = np.unique(idx[live], return_index=True)[1]
            passed += [(int(cards[idx[live][i]]), int(times[live][i])) for i in first]
            f.out.first_activity.setdefault(ring.ring_id, int(t0))
    else:  # low and slow: many merchants, IPs and days, a couple of attempts each
        merchants = rng.choice(np.arange(w.n_merchants // 10, w.n_merchants), int(rng.integers(20, 101)))
        idx = np.repeat(np.arange(len(cards)), rng.integers(1, 3, len(cards)))
        n = len(idx)
        lo = w.start_us + ring.start_day * DAY_US
        times = np.sort(rng.integers(lo, w.end_us, n))
        idx = rng.permutation(idx)
        live = live_card[idx]
        _card_attempts(f, ring, times, cards[idx], merchants[rng.integers(0, len(merchants), n)], live)
        _bot_sessions(f, ring, np.maximum(times - rng.integers(1, 30, n) * MINUTE_US, lo), cv_hi=0.09)
        first = np.unique(idx[live], return_index=True)[1]
        passed += [(int(cards[idx[live][i]]), int(times[live][i])) for i in first]
        f.out.first_activity[ring.ring_id] = int(times[0])
    # cards that passed are monetised later: larger purchases of resellable goods
    for card, t in passed:
        if rng.random() > 0.7:
            continue
        k = int(rng.integers(1, 4))
        times = t + rng.integers(6 * HOUR_US, 5 * DAY_US, k)
        times = times[times < w.end_us]
        if not len(times):
            continue
        acc = ring.members[rng.integers(0, len(ring.members), len(times))]
        ip = ring.proxy_ips[rng.integers(0, len(ring.proxy_ips), len(times))]
        f.out.payments.add(t=times, acc=acc, card=card, merch=rng.integers(0, min(30, w.n_merchants), len(times)),
                           amt=krw(rng, len(times), 90_000, 0.6, 20_000, 500_000, 1000), cur=KRW,
                           dec=rng.random(len(times)) < 0.12, dev=w.dev1[acc], ip=ip)


def plant_benign_flows(f: _Flows) -> None:
    """Payroll (benign fan-out), dues and rent (fan-in, sometimes passed on), marketplaces
    (fan-in from buyers, fan-out to sellers: a legitimate pass-through)."""
    w, rng = f.w, f.rng
    for employer, employees in w.payroll:
        for pay_day in range(int(rng.integers(0, min(w.days, 30))), w.days, 30):
            # the payroll batch runs at 09:00 KST, one transfer every few seconds
            t0 = w.start_us + pay_day * DAY_US + int(rng.integers(0, 30)) * MINUTE_US
            times = t0 + np.arange(len(employees)) * int(rng.integers(1, 6)) * SECOND_US
            amts = krw(rng, len(employees), 1_200_000, 0.35, 300_000, 5_000_000, 10_000)
            f.transfer(times, np.full(len(employees), employer), employees, amts)
    for collector, payers, venue in w.rent:
        amount = int(rng.choice([30_000, 50_000, 100_000, 350_000, 500_000, 650_000])) * 100
        for due in range(int(rng.integers(0, min(w.days, 30))), w.days + 3, 30):
            lo = w.start_us + (due - 2) * DAY_US
            times = rng.integers(lo, lo + 5 * DAY_US, len(payers))
            ok = (times >= w.start_us) & (times < w.end_us)
            f.transfer(times[ok], payers[ok], np.full(ok.sum(), collector), np.full(ok.sum(), amount))
            if venue >= 0 and ok.any():
                t = int(times[ok].max()) + int(rng.integers(1, 4)) * DAY_US
                if t < w.end_us:
                    f.transfer(t, collector, venue, int(amount * ok.sum() * rng.uniform(0.9, 1.0)) // 100 * 100)
    for market, buyers, sellers in w.markets:
        n = max(1, len(buyers) * w.days // 15)  # each buyer pays about twice a month
        times = np.sort(rng.integers(w.start_us, w.end_us, n))
        amts = krw(rng, n, 25_000, 0.8, 1000, 800_000, 100)
        f.transfer(times, buyers[rng.integers(0, len(buyers), n)], np.full(n, market), amts)
        day_of = (times - w.start_us) // DAY_US
        for d in range(w.days):
            takings = int(amts[day_of == d].sum())
            if not takings:
                continue
            k = int(min(len(sellers), rng.integers(10, 51)))
            share = np.maximum(rng.dirichlet(np.ones(k)) * takings * 0.9 // 100 * 100, 100).astype(np.int64)
            t = w.start_us + (d + 1) * DAY_US + 2 * HOUR_US + np.arange(k) * 2 * SECOND_US  # next-day batch
            keep = t < w.end_us
            f.transfer(t[keep], np.full(keep.sum(), market), rng.choice(sellers, k, replace=False)[keep],
                       share[keep])


def plant_all(w: World) -> Planted:
    out = Planted()
    f = _Flows(w, rng_for(w.seed, 3), out)
    for ring in w.rings:
        if ring.ring_type == "mule":
            plant_mule_ring(f, ring)
        else:
            plant_card_testing_ring(f, ring)
    plant_benign_flows(f)
    _pick_devices_and_ips(w, out, rng_for(w.seed, 5))
    return out


def _pick_devices_and_ips(w: World, out: Planted, rng: np.random.Generator) -> None:
    """Draw the device and IP of planted events marked PICK_LATER from their accounts, in one pass."""
    for sink, who in ((out.transfers, "src"), (out.payments, "acc"), (out.sessions, "acc")):
        cols = sink.columns()
        later = cols["dev"] == PICK_LATER
        dev, ip = pick_device_ip(w, cols[who][later], rng)
        cols["dev"][later], cols["ip"][later] = dev, ip
        sink.replace(cols)
