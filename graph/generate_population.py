"""The people, devices, networks, cards and merchants of the synthetic world.

Everything is an integer code into a pool (account, device, card, IP,
merchant); text ids are made only when tables are written. Ring members and
their infrastructure are decided here too, because background behaviour
(camouflage) uses them: ring accounts log in from the ring's device farm and
proxy IPs while also paying like everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graph.generate_common import DAY_US, EUR, HOUR_US, JPY, USD, rng_for

YEAR_US = 365 * DAY_US

# (lat, lon, weight) of Korean cities: geolocation of KR addresses.
KR_CITIES = np.array([
    (37.5665, 126.9780, 0.42), (35.1796, 129.0756, 0.10), (37.4563, 126.7052, 0.08),
    (35.8714, 128.6014, 0.07), (36.3504, 127.3845, 0.05), (35.1595, 126.8526, 0.05),
    (37.2636, 127.0286, 0.11), (33.4996, 126.5312, 0.03), (35.5384, 129.3114, 0.04),
    (36.6424, 127.4890, 0.05),
])

# Countries, their capital-ish coordinates, currency and an address block.
COUNTRIES = ("KR", "JP", "US", "TH", "VN", "FR", "DE", "SG", "PH", "NL", "HK", "RU")
COUNTRY_GEO = {
    "JP": (35.68, 139.69), "US": (40.71, -74.01), "TH": (13.75, 100.50), "VN": (21.03, 105.85),
    "FR": (48.86, 2.35), "DE": (52.52, 13.40), "SG": (1.35, 103.82), "PH": (14.60, 120.98),
    "NL": (52.37, 4.90), "HK": (22.32, 114.17), "RU": (55.75, 37.62),
}
TRAVEL = (  # country, weight, currency used abroad, block
    ("JP", 0.36, JPY, "126.0.0.0/8"), ("US", 0.14, USD, "73.0.0.0/8"), ("TH", 0.12, USD, "171.96.0.0/11"),
    ("VN", 0.12, USD, "113.160.0.0/11"), ("FR", 0.06, EUR, "90.0.0.0/9"), ("DE", 0.05, EUR, "91.0.0.0/10"),
    ("SG", 0.07, USD, "116.86.0.0/15"), ("PH", 0.08, USD, "112.198.0.0/16"),
)
HOME_BLOCKS = ("121.128.0.0/10", "175.192.0.0/10", "58.224.0.0/11", "211.176.0.0/12")
CGNAT_BLOCKS = ("223.32.0.0/11", "110.70.0.0/15", "117.111.0.0/16")  # SKT, KT, LG U+ mobile NAT
CARRIER_SHARE = (0.47, 0.30, 0.23)
OFFICE_BLOCK = "211.32.0.0/11"
PROXY_BLOCKS = (  # hosting / VPN exits used by rings
    ("NL", "185.107.0.0/16"), ("US", "104.16.0.0/12"), ("SG", "103.253.0.0/16"),
    ("HK", "45.64.0.0/16"), ("RU", "5.8.0.0/16"), ("KR", "1.234.0.0/16"),
)

MULE_TYPOLOGIES = ("fan_in_out", "scatter_gather", "layering", "cycle")
MULE_TYPOLOGY_P = (0.35, 0.30, 0.20, 0.15)
CT_TYPOLOGIES = ("bot_burst", "low_and_slow")
CT_TYPOLOGY_P = (0.6, 0.4)

CONFOUNDER_KINDS = ("family_device", "cgnat_ip", "office_ip", "payroll_employer", "payroll_employee",
                    "rent_collector", "rent_payer", "marketplace", "marketplace_seller", "traveller")


@dataclass
class Ring:
    ring_id: str
    ring_type: str  # mule | card_testing
    typology: str
    members: np.ndarray  # account codes
    farm_devices: np.ndarray
    proxy_ips: np.ndarray
    cards: np.ndarray  # stolen cards (card testing only)
    start_day: int


@dataclass
class IpPool:
    addr: list = field(default_factory=list)
    country: list = field(default_factory=list)
    lat: list = field(default_factory=list)
    lon: list = field(default_factory=list)
    size: int = 0
    _used: dict = field(default_factory=dict)

    def add(self, rng: np.random.Generator, cidr: str, count: int, country: str) -> int:
        """Allocate ``count`` distinct addresses in ``cidr``; returns the first pool code."""
        net, bits = cidr.split("/")
        base = int.from_bytes(bytes(int(o) for o in net.split(".")), "big")
        span = 1 << (32 - int(bits))
        used = self._used.get(cidr, 0)
        if used + count > span - 2:
            raise ValueError(f"address block {cidr} too small for {used + count} addresses")
        # An affine map with an odd multiplier permutes the block: distinct, scattered addresses.
        # The multiplier and offset depend only on the block, so later calls continue the sequence.
        # 2654435761 is a prime larger than any block, hence coprime with span - 2; hosts skip
        # the block's first and last address.
        room = span - 2
        off = ((base >> 12) * 40503 + 7919) % room
        k = np.arange(used, used + count, dtype=np.uint64)
        host = np.uint64(1) + (k * np.uint64(2654435761 % room) + np.uint64(off)) % np.uint64(room)
        self._used[cidr] = used + count
        self.addr.append((np.uint64(base) + host).astype(np.uint32))
        self.country.append(np.full(count, COUNTRIES.index(country), dtype=np.int16))
        if country == "KR":
            city = rng.choice(len(KR_CITIES), count, p=KR_CITIES[:, 2] / KR_CITIES[:, 2].sum())
            lat, lon = KR_CITIES[city, 0], KR_CITIES[city, 1]
        else:
            lat, lon = np.full(count, COUNTRY_GEO[country][0]), np.full(count, COUNTRY_GEO[country][1])
        self.lat.append(np.round(lat + rng.normal(0, 0.08, count), 4))
        self.lon.append(np.round(lon + rng.normal(0, 0.08, count), 4))
        start = self.size
        self.size += count
        return start

    def add_spread(self, rng, blocks: tuple[str, ...], count: int, country: str) -> int:
        """Allocate over several blocks in turn (one contiguous code range)."""
        start, left = self.size, count
        for b in blocks:
            span = (1 << (32 - int(b.split("/")[1]))) - 2 - self._used.get(b, 0)
            take = min(left, span)
            if take:
                self.add(rng, b, take, country)
            left -= take
            if not left:
                return start
        raise ValueError("address blocks exhausted")


@dataclass
class World:
    """All pools and per-account attributes; codes index the arrays."""

    seed: int
    n: int
    n_legit: int
    days: int
    start_us: int
    end_us: int
    # accounts
    created_us: np.ndarray
    kyc: np.ndarray
    dev1: np.ndarray
    dev2: np.ndarray
    home_ip: np.ndarray
    carrier: np.ndarray
    office_ip: np.ndarray
    card1: np.ndarray
    card2: np.ndarray
    pay_rate: np.ndarray
    sess_rate: np.ndarray
    xfer_rate: np.ndarray
    circle_order: np.ndarray
    circle_start: np.ndarray
    circle_size: np.ndarray
    circle_pos: np.ndarray
    fav1: np.ndarray
    fav2: np.ndarray
    ring_of: np.ndarray
    bot_p: np.ndarray
    proxy_start: np.ndarray
    proxy_count: np.ndarray
    trip_start: np.ndarray
    trip_end: np.ndarray
    trip_country: np.ndarray
    # pools
    n_devices: int
    card_bin: np.ndarray  # per card: code into bins, -1 = null
    bins: list[str]
    ip_addr: np.ndarray
    ip_country: np.ndarray
    ip_lat: np.ndarray
    ip_lon: np.ndarray
    cgnat_start: np.ndarray
    cgnat_count: np.ndarray
    travel_start: np.ndarray
    travel_count: np.ndarray
    travel_currency: np.ndarray
    n_merchants: int
    merch_cdf: np.ndarray
    rings: list[Ring]
    # benign look-alikes: employer -> employees, collector -> (payers, venue), marketplace -> (buyers, sellers)
    payroll: list[tuple[int, np.ndarray]]
    rent: list[tuple[int, np.ndarray, int]]
    markets: list[tuple[int, np.ndarray, np.ndarray]]
    confounders: list[tuple[str, str, np.ndarray]]

    @property
    def n_cards(self) -> int:
        return len(self.card_bin)

    def sample_merchants(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.merch_cdf, rng.random(n)), self.n_merchants - 1)


def _lognormal_rate(rng, n: int, mean: float, sigma: float) -> np.ndarray:
    return rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n).astype(np.float32)


def _ring_sizes(rng, n_accounts: int) -> tuple[list[str], list[str], np.ndarray]:
    """Ring count scales with accounts (~1 per 450); sizes 3-40 with ~2-4 % of accounts in rings."""
    n_rings = max(6, round(n_accounts / 450))
    n_mule = max(4, round(0.6 * n_rings))
    n_ct = max(2, n_rings - n_mule)
    mule_types = list(MULE_TYPOLOGIES) + list(rng.choice(MULE_TYPOLOGIES, n_mule - 4, p=MULE_TYPOLOGY_P))
    ct_types = list(CT_TYPOLOGIES) + list(rng.choice(CT_TYPOLOGIES, n_ct - 2, p=CT_TYPOLOGY_P))
    types = ["mule"] * n_mule + ["card_testing"] * n_ct
    typologies = [str(t) for t in mule_types + ct_types]
    mule_sizes = np.clip(np.round(rng.lognormal(np.log(11), 0.6, n_mule)), 3, 40)
    ct_sizes = rng.integers(3, 13, n_ct)
    sizes = np.concatenate([mule_sizes, ct_sizes]).astype(np.int64)
    sizes[[i for i, t in enumerate(typologies) if t == "scatter_gather"]] += 1  # source, sink, >= 2 middles
    sizes = np.clip(sizes, 3, 40)
    cap = max(int(0.05 * n_accounts), 3 * n_rings)
    while sizes.sum() > cap:  # tiny worlds: shrink the largest rings first
        sizes[np.argmax(sizes)] -= 1
    sizes = np.maximum(sizes, [4 if t == "scatter_gather" else 3 for t in typologies])
    return types, typologies, sizes


def build_world(n_accounts: int, days: int, start_us: int, seed: int) -> World:
    if n_accounts < 500:
        raise ValueError("need at least 500 accounts to plant rings among a legitimate background")
    rng = rng_for(seed, 1)
    N = n_accounts
    types, typologies, sizes = _ring_sizes(rng, N)
    R = int(sizes.sum())
    L = N - R
    end_us = start_us + days * DAY_US
    ring_of = np.full(N, -1, dtype=np.int64)
    bounds = L + np.concatenate([[0], np.cumsum(sizes)])
    for r in range(len(sizes)):
        ring_of[bounds[r]:bounds[r + 1]] = r
    is_ring = ring_of >= 0

    # --- accounts: opened over years; ring accounts mostly new and low-KYC ---
    age = np.minimum(rng.exponential(2.5 * YEAR_US, N), 10 * YEAR_US).astype(np.int64) + DAY_US
    created = start_us - age
    new_in_window = (rng.random(N) < 0.03) & ~is_ring
    created[new_in_window] = start_us + rng.integers(0, days, new_in_window.sum()) * DAY_US \
        + rng.integers(0, 6 * HOUR_US, new_in_window.sum())
    kyc = rng.choice(4, N, p=[0.04, 0.18, 0.40, 0.38]).astype(np.int32)
    start_days = np.zeros(len(sizes), dtype=np.int64)
    for r in range(len(sizes)):
        start_days[r] = rng.integers(0, max(1, days - 1)) if types[r] == "mule" else rng.integers(0, days)
        m = slice(bounds[r], bounds[r + 1])
        k = sizes[r]
        ring_start = start_us + start_days[r] * DAY_US
        recent = rng.random(k) < 0.75
        lo = start_us - 90 * DAY_US
        created[m] = np.where(recent, rng.integers(lo, ring_start - 2 * HOUR_US, k),
                              start_us - rng.integers(YEAR_US, 6 * YEAR_US, k))
        kyc[m] = rng.choice(4, k, p=[0.35, 0.45, 0.15, 0.05])
    kyc[rng.random(N) < 0.01] = -1

    # --- households, devices, home IPs, carriers, offices ---
    ips = IpPool()
    n_dev = 0
    dev1 = np.arange(N, dtype=np.int64)
    n_dev += N
    has2 = rng.random(N) < 0.35
    dev2 = np.full(N, -1, dtype=np.int64)
    dev2[has2] = n_dev + np.arange(has2.sum())
    n_dev += int(has2.sum())

    perm = rng.permutation(L)
    hh_sizes = rng.choice([1, 2, 3, 4], L, p=[0.45, 0.30, 0.17, 0.08])
    hh_sizes = hh_sizes[: np.searchsorted(np.cumsum(hh_sizes), L) + 1]
    n_hh = len(hh_sizes)
    hh_of = np.empty(L, dtype=np.int64)
    hh_of[perm] = np.repeat(np.arange(n_hh), hh_sizes)[:L]
    home_start = ips.add_spread(rng, HOME_BLOCKS, n_hh + R, "KR")
    home_ip = np.empty(N, dtype=np.int64)
    home_ip[:L] = home_start + hh_of
    home_ip[L:] = home_start + n_hh + np.arange(R)
    real_sizes = np.bincount(hh_of, minlength=n_hh)
    family_hh = np.flatnonzero((real_sizes >= 2) & (rng.random(n_hh) < 0.3))
    family_dev = np.full(n_hh, -1, dtype=np.int64)
    family_dev[family_hh] = n_dev + np.arange(len(family_hh))
    n_dev += len(family_hh)
    in_family = family_dev[hh_of] >= 0
    dev2[:L][in_family] = family_dev[hh_of][in_family]

    carrier = rng.choice(3, N, p=CARRIER_SHARE).astype(np.int64)
    n_cgnat = max(3, N // 450)
    cgnat_start = np.array([ips.add(rng, b, n_cgnat, "KR") for b in CGNAT_BLOCKS], dtype=np.int64)
    cgnat_count = np.full(3, n_cgnat, dtype=np.int64)
    n_office = max(3, N // 2000)
    office_start = ips.add(rng, OFFICE_BLOCK, n_office, "KR")
    office_ip = np.full(N, -1, dtype=np.int64)
    in_office = (rng.random(N) < 0.15) & ~is_ring
    office_ip[in_office] = office_start + rng.integers(0, n_office, in_office.sum())
    n_travel_ips = max(4, N // 2000)
    travel_start = np.array([ips.add(rng, blk, n_travel_ips, c) for c, _, _, blk in TRAVEL], dtype=np.int64)
    travel_count = np.full(len(TRAVEL), n_travel_ips, dtype=np.int64)
    travel_currency = np.array([cur for _, _, cur, _ in TRAVEL], dtype=np.int8)

    # --- cards: BINs concentrate on a few big Korean issuers ---
    bins = sorted({f"{rng.choice([4, 5, 9, 3], p=[.45, .35, .15, .05])}{rng.integers(0, 100000):05d}"
                   for _ in range(48)})
    bin_p = 1.0 / np.arange(1, len(bins) + 1) ** 0.9
    bin_p /= bin_p.sum()
    card1 = np.arange(N, dtype=np.int64)
    has_c2 = rng.random(N) < 0.3
    card2 = np.full(N, -1, dtype=np.int64)
    card2[has_c2] = N + np.arange(has_c2.sum())
    n_card = N + int(has_c2.sum())
    card_bin = [rng.choice(len(bins), n_card, p=bin_p)]

    # --- merchants: Zipf popularity, a few giant game stores and subscriptions ---
    M = int(np.clip(N // 100, 200, 20000))
    w = 1.0 / np.arange(1, M + 1) ** 1.05
    w[:3] *= 3.0
    merch_cdf = np.cumsum(w / w.sum())

    # --- rings: device farms, proxy exits, stolen cards ---
    rings: list[Ring] = []
    bot_p = np.zeros(N, dtype=np.float32)
    proxy_start = np.full(N, -1, dtype=np.int64)
    proxy_count = np.zeros(N, dtype=np.int64)
    for r in range(len(sizes)):
        members = np.arange(bounds[r], bounds[r + 1])
        k = len(members)
        ct = types[r] == "card_testing"
        farm = ct or rng.random() < 0.45
        proxy = ct or rng.random() < 0.40
        farm_devs = np.empty(0, dtype=np.int64)
        if farm:
            n_farm = int(rng.integers(1, 4)) if ct else max(1, k // 5)
            farm_devs = n_dev + np.arange(n_farm)
            n_dev += n_farm
            dev1[members] = rng.choice(farm_devs, k)
        proxy_ips = np.empty(0, dtype=np.int64)
        if proxy:
            n_px = int(rng.integers(8, 31)) if typologies[r] == "low_and_slow" else int(rng.integers(2, 7))
            country, blk = PROXY_BLOCKS[rng.integers(0, len(PROXY_BLOCKS))]
            p0 = ips.add(rng, blk, n_px, country)
            proxy_ips = p0 + np.arange(n_px)
            proxy_start[members], proxy_count[members] = p0, n_px
        cards = np.empty(0, dtype=np.int64)
        if ct:
            n_cards = int(rng.integers(30, 251)) if typologies[r] == "bot_burst" else int(rng.integers(20, 121))
            ring_bins = rng.choice(len(bins), int(rng.integers(1, 4)), replace=False, p=bin_p)
            cards = n_card + np.arange(n_cards)
            n_card += n_cards
            card_bin.append(rng.choice(ring_bins, n_cards))
            bot_p[members] = 0.85 if typologies[r] == "bot_burst" else 0.6
        rings.append(Ring(f"ring-{r + 1:04d}", types[r], typologies[r], members, farm_devs, proxy_ips,
                          cards, int(start_days[r])))
    card_bin = np.concatenate(card_bin).astype(np.int64)
    card_bin[rng.random(len(card_bin)) < 0.005] = -1

    # --- behaviour rates; ring accounts are quieter in the background (camouflage) ---
    pay_rate = _lognormal_rate(rng, N, 0.25, 0.9)
    sess_rate = _lognormal_rate(rng, N, 0.22, 0.7)
    xfer_rate = _lognormal_rate(rng, N, 0.035, 1.0)
    for a in (pay_rate, sess_rate, xfer_rate):
        a[is_ring] *= 0.5

    # --- social circles (friend transfers), favourite merchants ---
    order = rng.permutation(N)
    c_sizes = rng.integers(3, 13, N // 3 + 2)
    c_sizes = c_sizes[: np.searchsorted(np.cumsum(c_sizes), N) + 1]
    c_starts = np.concatenate([[0], np.cumsum(c_sizes)[:-1]])
    c_of_pos = np.repeat(np.arange(len(c_sizes)), c_sizes)[:N]
    circle_start = np.empty(N, dtype=np.int64)
    circle_size = np.empty(N, dtype=np.int64)
    circle_pos = np.empty(N, dtype=np.int64)
    circle_start[order] = c_starts[c_of_pos]
    circle_size[order] = np.minimum(c_sizes[c_of_pos], N - c_starts[c_of_pos])
    circle_pos[order] = np.arange(N) - c_starts[c_of_pos]
    fav_rng_cdf = merch_cdf
    fav1 = np.minimum(np.searchsorted(fav_rng_cdf, rng.random(N)), M - 1)
    fav2 = np.minimum(np.searchsorted(fav_rng_cdf, rng.random(N)), M - 1)

    # --- travellers (legitimate geo jumps) ---
    trip_start = np.full(N, -10**6, dtype=np.int64)
    trip_end = np.full(N, -10**6, dtype=np.int64)
    trip_country = np.zeros(N, dtype=np.int64)
    travellers = np.flatnonzero((rng.random(N) < 0.012) & ~is_ring & (created < start_us))
    trip_start[travellers] = rng.integers(-2, max(1, days - 1), len(travellers))
    trip_end[travellers] = trip_start[travellers] + rng.integers(2, 11, len(travellers))
    trip_country[travellers] = rng.choice(len(TRAVEL), len(travellers), p=[t[1] for t in TRAVEL])
    travellers = travellers[trip_end[travellers] > 0]

    # --- benign look-alikes among established legitimate accounts ---
    established = np.flatnonzero((created[:L] < start_us - YEAR_US) & (trip_end[:L] < 0))
    n_emp, n_col, n_mkt = max(2, N // 5000), max(2, N // 4000), max(1, N // 20000)
    biz = rng.choice(established, n_emp + n_col + n_mkt, replace=False)
    employers, collectors, markets_acc = biz[:n_emp], biz[n_emp:n_emp + n_col], biz[n_emp + n_col:]
    kyc[biz] = 3
    office_ip[employers] = office_start + rng.integers(0, n_office, n_emp)
    biz_set = np.zeros(N, dtype=bool)
    biz_set[biz] = True
    ordinary = np.flatnonzero(~biz_set[:L])
    payroll = [(int(e), rng.choice(ordinary, int(min(rng.integers(20, 201), L // 10)), replace=False))
               for e in employers]
    rent = [(int(c), rng.choice(ordinary, int(min(rng.integers(10, 61), L // 20)), replace=False),
             int(rng.choice(ordinary)) if rng.random() < 0.5 else -1) for c in collectors]
    markets = [(int(m), rng.choice(ordinary, int(min(rng.integers(100, 2001), L // 4)), replace=False),
                rng.choice(ordinary, int(min(rng.integers(30, 301), L // 10)), replace=False))
               for m in markets_acc]

    confounders = [
        ("family_device", "device", family_dev[family_hh]),
        ("cgnat_ip", "ip", np.concatenate([s + np.arange(n_cgnat) for s in cgnat_start])),
        ("office_ip", "ip", office_start + np.arange(n_office)),
        ("payroll_employer", "account", employers),
        ("payroll_employee", "account", np.unique(np.concatenate([e for _, e in payroll]))),
        ("rent_collector", "account", collectors),
        ("rent_payer", "account", np.unique(np.concatenate([p for _, p, _ in rent]))),
        ("marketplace", "account", markets_acc),
        ("marketplace_seller", "account", np.unique(np.concatenate([s for _, _, s in markets]))),
        ("traveller", "account", travellers),
    ]

    return World(
        seed=seed, n=N, n_legit=L, days=days, start_us=start_us, end_us=end_us,
        created_us=created, kyc=kyc, dev1=dev1, dev2=dev2, home_ip=home_ip, carrier=carrier,
        office_ip=office_ip, card1=card1, card2=card2, pay_rate=pay_rate, sess_rate=sess_rate,
        xfer_rate=xfer_rate, circle_order=order, circle_start=circle_start, circle_size=circle_size,
        circle_pos=circle_pos, fav1=fav1, fav2=fav2, ring_of=ring_of, bot_p=bot_p,
        proxy_start=proxy_start, proxy_count=proxy_count, trip_start=trip_start, trip_end=trip_end,
        trip_country=trip_country, n_devices=n_dev, card_bin=card_bin, bins=bins,
        ip_addr=np.concatenate(ips.addr), ip_country=np.concatenate(ips.country),
        ip_lat=np.concatenate(ips.lat), ip_lon=np.concatenate(ips.lon),
        cgnat_start=cgnat_start, cgnat_count=cgnat_count, travel_start=travel_start,
        travel_count=travel_count, travel_currency=travel_currency, n_merchants=M, merch_cdf=merch_cdf,
        rings=rings, payroll=payroll, rent=rent, markets=markets, confounders=confounders,
    )

