"""One typed configuration, loaded once from YAML and validated.

``conf/default.yaml`` holds the embedded defaults (local Spark, local files).
A run may name another file with ``--conf``; its keys are merged over the
defaults, so a cluster file only states what differs. Unknown keys, wrong
types and bad paths fail fast with the file and the dotted key.

Secrets never live in YAML: they come from the environment only
(``RINGFENCE_HMAC_KEY``, ``RINGFENCE_SIGNING_KEY``, ``RINGFENCE_REDIS_PASSWORD``).
Paths may be overridden by environment variables too (see ``ENV_OVERRIDES``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF = REPO_ROOT / "conf" / "default.yaml"


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConf(_Section):
    app_name: str = "ringfence"
    master: str = "local[*]"
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = "4g"
    checkpoint_dir: str = "/tmp/ringfence-checkpoints"
    # Local jar paths; relative paths are resolved against the repo root.
    # The default points at the folder ``make setup`` fills with mvn.
    jars_dir: str | None = ".jars"
    # Maven coordinates for clusters that resolve packages themselves.
    jars_packages: list[str] = Field(default_factory=list)
    # Passed through verbatim to SparkSession.builder.config.
    extra_conf: dict[str, str] = Field(default_factory=dict)
    log_level: str = "WARN"


class PipelineConf(_Section):
    lookback_days: int = Field(30, ge=1)
    # Entities whose label timestamp is after the cut-off are ignored.
    label_cutoff: Literal["run_start", "ds_start"] = "ds_start"


class ValidationConf(_Section):
    # A table with more than this fraction of rows quarantined fails the run.
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)
    currencies: list[str] = Field(default_factory=lambda: ["KRW", "USD", "EUR", "JPY"])


class HubConf(_Section):
    # Identifiers shared by more accounts than this are hubs (set aside).
    max_accounts_per_device: int = Field(50, ge=1)
    max_accounts_per_ip: int = Field(25, ge=1)
    max_accounts_per_card: int = Field(50, ge=1)
    max_accounts_per_merchant: int = Field(50, ge=1)
    max_transfer_degree: int = Field(60, ge=1)
    exclude: list[str] = Field(default_factory=list)
    # Distribution-aware cap (graph/hubs.py): also a hub when the degree exceeds
    # max(outlier_min_degree, outlier_multiplier x the outlier_quantile of its type).
    outlier_quantile: float = Field(0.99, gt=0.0, lt=1.0)
    outlier_multiplier: float | None = Field(3.0, gt=0.0)  # null disables the rule
    outlier_min_degree: int = Field(10, ge=1)
    # Merchants link strangers: only merchants with at most this many accounts
    # link accounts in the account projection (0 = merchants never link).
    merchant_link_max_accounts: int = Field(3, ge=0)
    # Edge weights (graph/build.py): an event's weight halves every this many days.
    edge_half_life_days: float = Field(7.0, gt=0.0)


class RingConf(_Section):
    min_ring_size: int = Field(3, ge=2)
    # Components at most this large are refined with networkx in applyInArrow.
    max_component_for_refinement: int = Field(5000, ge=10)
    # A component is split into communities only when their modularity reaches this;
    # below it the component stays one ring (0: always take the communities found).
    min_split_modularity: float = Field(0.3, ge=0.0, le=1.0)
    # A component linked only by money (every account-to-account link moved money) with at
    # most this many accounts is one ring, never split: a layering tree (0: split it like any other).
    money_component_max_accounts: int = Field(50, ge=0)
    # Overlap (Jaccard) needed to carry a ring id over from the previous night.
    id_match_jaccard: float = Field(0.3, ge=0.0, le=1.0)
    # Collections to the driver are allowed only below this many rows.
    driver_collect_max_rows: int = Field(200_000, ge=0)
    # GraphFrames connectedComponents: "graphframes" (large-star/small-star,
    # scales out) or "graphx"; checkpoint every N iterations to cut lineage;
    # nodes above the degree threshold are handled by broadcast (skew).
    cc_algorithm: Literal["graphframes", "graphx"] = "graphframes"
    cc_checkpoint_interval: int = Field(2, ge=0)
    cc_broadcast_threshold: int = Field(1_000_000, ge=-1)


class CandidateConf(_Section):
    """The candidate graph whose connected components are the candidate rings (graph/candidates.py).

    Each link type carries its own evidence test, measured in bench/bench_candidates.py.
    """

    # Hubs found by `degree_outlier` of these types still take part in candidate links:
    # an account with many transfer partners (a mule collector as much as an employer)
    # is judged by the money test, and a device or card shared by more accounts than
    # usual is evidence, not infrastructure. `excluded` and `degree_cap` hubs never link.
    outlier_hubs_link: list[Literal["account", "device", "ip", "card", "merchant"]] = Field(
        default_factory=lambda: ["account", "device", "card"])
    # An IP set aside by the hub cap (`hubs.max_accounts_per_ip`) with at most this many
    # accounts still takes part in the IP footprint rule below, and only there: a mule ring
    # bigger than the IP cap shares its proxy exits among all its members. None: never.
    ip_footprint_max_accounts: int | None = Field(50, ge=0)
    # A transfer a -> b is mule-like when a's fresh money (inflows of the last
    # scoring.signals.pass_through_hours minus what a sent in that time) covers at least
    # this share of the amount, and b moved at least this share on (transfers out,
    # payments) within the same hours ...
    forward_share: float = Field(0.5, gt=0.0, le=1.0)
    # ... or b collects such forwarded transfers from at least this many distinct senders.
    collector_min_senders: int = Field(3, ge=2)
    # An IP links two accounts only when they share at least this many non-hub IPs ...
    ip_min_shared: int = Field(2, ge=1)
    # ... making up at least this Jaccard share of the non-hub IPs the two used.
    ip_min_jaccard: float = Field(0.3, ge=0.0, le=1.0)
    # An IP is a group's proxy exit when at least this many of its accounts, and at least
    # ip_exit_min_share of all of them, have a footprint link through it; every two accounts
    # on an exit link (`ip_exit`). None: no exits.
    ip_exit_min_accounts: int | None = Field(5, ge=2)
    ip_exit_min_share: float = Field(0.8, gt=0.0, le=1.0)
    # A card of one account joins that account's candidate component when at least
    # this share of its attempts were tiny or declined (card-testing evidence).
    test_card_min_tiny_share: float = Field(0.25, ge=0.0, le=1.0)
    test_card_min_decline_rate: float = Field(0.5, ge=0.0, le=1.0)
    # A device of one account joins that account's candidate component when at least
    # this share of its sessions had a machine-like tap cadence (scoring.signals.bot_tap_cv).
    bot_device_min_share: float = Field(0.5, ge=0.0, le=1.0)


class SignalConf(_Section):
    """Per-entity behavioural signals (graph/signals.py) and when they become reasons."""

    # Authorisations at or below this amount (per currency) count as "tiny".
    tiny_amount: dict[str, float] = Field(
        default_factory=lambda: {"KRW": 1000.0, "USD": 1.0, "EUR": 1.0, "JPY": 100.0}
    )
    # A session whose tap-interval CV is below this looks machine-driven.
    bot_tap_cv: float = Field(0.1, ge=0.0)
    impossible_speed_kmh: float = Field(900.0, gt=0.0)
    # IP geolocation is city-level at best: shorter hops are noise, not travel.
    geo_min_distance_km: float = Field(500.0, ge=0.0)
    # Floor on the time between sessions, so simultaneous sessions have a finite speed.
    geo_min_gap_minutes: float = Field(1.0, gt=0.0)
    # Inflow counts as passed through when it leaves within this many hours.
    pass_through_hours: float = Field(48.0, gt=0.0)
    # Reasons: a signal becomes a reason text only past these thresholds.
    reason_min_attempts: int = Field(20, ge=1)
    reason_decline_rate: float = Field(0.5, ge=0.0, le=1.0)
    reason_tiny_share: float = Field(0.5, ge=0.0, le=1.0)
    reason_distinct_cards: int = Field(10, ge=2)
    reason_top_bin_share: float = Field(0.8, ge=0.0, le=1.0)
    reason_merchants_per_card: int = Field(10, ge=2)
    reason_bot_min_sessions: int = Field(5, ge=1)
    reason_gap_cv: float = Field(0.1, ge=0.0)
    reason_gap_min_events: int = Field(10, ge=3)
    reason_day_burst_ratio: float = Field(10.0, ge=1.0)
    reason_burst_min_events: int = Field(20, ge=1)
    reason_pass_through: float = Field(0.8, ge=0.0, le=1.0)
    reason_pass_through_min_inflows: int = Field(3, ge=1)
    reason_fan: int = Field(10, ge=2)
    reason_new_account_days: int = Field(14, ge=0)
    reason_new_account_min_inflows: int = Field(5, ge=1)


def _rising(bounds: tuple[float, float]) -> tuple[float, float]:
    if not bounds[0] < bounds[1]:
        raise ValueError(f"a ramp needs low < high, got {list(bounds)}")
    return bounds


# [low, high]: an evidence feature rises linearly from 0 at ``low`` to 1 at ``high``.
Ramp = Annotated[tuple[float, float], AfterValidator(_rising)]


class EvidenceConf(_Section):
    """How raw signals become evidence features in [0, 1] (graph/score.py).

    Rates are multiplied by a confidence ``n / (n + half)`` in the count they
    are measured over, so 2 of 2 declined attempts weigh less than 200 of 250.
    """

    attempts_half: float = Field(10.0, gt=0.0)
    inflows_half: float = Field(3.0, gt=0.0)
    sessions_half: float = Field(3.0, gt=0.0)
    events_half: float = Field(10.0, gt=0.0)
    decline_rate: Ramp = (0.2, 0.8)
    tiny_share: Ramp = (0.3, 0.9)
    cards: Ramp = (3.0, 20.0)
    merchants_per_card: Ramp = (3.0, 10.0)
    burst_per_min: Ramp = (0.5, 3.0)
    pass_through: Ramp = (0.5, 0.9)
    fan: Ramp = (3.0, 15.0)
    # Falling: an account younger than low days counts fully, older than high not at all.
    new_account_days: Ramp = (30.0, 180.0)
    bot_session_share: Ramp = (0.3, 0.9)
    # Falling: an inter-event CV below low is fully machine-like, above high not at all.
    gap_cv: Ramp = (0.1, 0.5)
    impossible_travel: Ramp = (0.0, 2.0)
    day_burst_ratio: Ramp = (3.0, 20.0)
    # Ring members: the most ring accounts (itself included) on one device, IP or card it used.
    ring_shared_accounts: Ramp = (4.0, 8.0)
    # Ring members: the ring's accounts it is directly linked to (graph/rings.py ring_links).
    ring_links: Ramp = (1.0, 2.0)
    # Ring members: money moved on mule-like links over the ring's median mover's (graph/rings.py money_share).
    ring_money_share: Ramp = (0.2, 0.5)
    # Rings: accounts on mule-like transfer links (graph/score.py money_flow_accounts).
    money_flow_accounts: Ramp = (3.0, 6.0)


class EntityWeights(_Section):
    """Log-odds weights of the entity score (graph/score.py). All but the bias are >= 0,
    so a score can only rise with fraud evidence and only fall with a legit label."""

    bias: float = -8.679
    ct_decline: float = Field(0.0, ge=0.0)
    ct_tiny: float = Field(29.184, ge=0.0)
    ct_cards: float = Field(3.898, ge=0.0)
    ct_merchants_per_card: float = Field(0.0, ge=0.0)
    ct_burst: float = Field(2.321, ge=0.0)
    mule_pass_through: float = Field(2.846, ge=0.0)
    mule_fan_in: float = Field(2.968, ge=0.0)
    mule_fan_out: float = Field(0.0, ge=0.0)
    mule_new_account: float = Field(7.624, ge=0.0)
    bot_taps: float = Field(0.0, ge=0.0)
    bot_timing: float = Field(0.0, ge=0.0)
    bot_travel: float = Field(3.554, ge=0.0)
    bot_burst: float = Field(2.852, ge=0.0)
    ring_member: float = Field(8.832, ge=0.0)
    ring_link: float = Field(2.462, ge=0.0)
    ring_shared: float = Field(22.523, ge=0.0)
    ring_tied: float = Field(1.948, ge=0.0)
    ring_money: float = Field(0.706, ge=0.0)
    propagated: float = Field(1.298, ge=0.0)
    fraud_label: float = Field(5.002, ge=0.0)
    legit_label: float = Field(0.599, ge=0.0)


class RingScoreConf(_Section):
    """Log-odds weights of the ring score and when a ring is listed (graph/score.py)."""

    bias: float = -12.244
    density: float = Field(0.0, ge=0.0)
    shared_infrastructure: float = Field(5.198, ge=0.0)
    card_testing: float = Field(28.053, ge=0.0)
    mule: float = Field(19.325, ge=0.0)
    bot: float = Field(4.695, ge=0.0)
    # x money_flow_evidence: how rare tonight the ring's share of accounts on mule-like transfer links is
    # (graph/score.py money_flow_evidence); money_flow_prior pseudo-accounts in rings without money flow
    # keep a night with few rings from making every money-flow ring look common (not fitted).
    money_flow: float = Field(2.679, ge=0.0)
    money_flow_prior: float = Field(100.0, ge=0.0)
    # x money_flow_evidence x ramp(money_flow_accounts, evidence.money_flow_accounts): many ring
    # accounts on mule-like transfer links, on a night where such links are rare.
    money_accounts: float = Field(12.391, ge=0.0)
    propagated: float = Field(5.533, ge=0.0)
    fraud_labels: float = Field(11.824, ge=0.0)
    legit_labels: float = Field(0.664, ge=0.0)
    # Label shares are n_labelled / (ring size + label_prior): one label in a big ring is little.
    label_prior: float = Field(2.0, ge=0.0)
    threshold: float = Field(0.5, ge=0.0, le=1.0)


class ScoringConf(_Section):
    signals: SignalConf = SignalConf()
    propagation_iterations: int = Field(10, ge=1)
    # Share of risk lost per hop (the restart probability of personalised PageRank).
    propagation_alpha: float = Field(0.15, gt=0.0, lt=1.0)
    # How strongly each edge type carries risk (x its recency weight); 0 = not at all.
    propagation_edge_factors: dict[str, float] = Field(
        default_factory=lambda: {
            "account_device": 1.0, "account_card": 1.0, "account_ip": 0.5, "transfer": 1.0,
            "card_merchant": 0.1, "account_merchant": 0.1,
        }
    )
    # Pseudo-weight of a risk-0 neighbour every vertex has: one edge to a seed
    # does not make a vertex as risky as the seed's closest accomplices.
    propagation_smoothing: float = Field(1.0, ge=0.0)
    # Checkpoint the vertex table every N iterations (cuts the lineage).
    propagation_checkpoint_interval: int = Field(3, ge=1)
    # Propagated risk below this is left out of the propagated table (as 0): it would move a logit by less
    # than weights.propagated x this. 0 keeps every vertex with risk > 0.
    propagation_min_risk: float = Field(0.001, ge=0.0, le=1.0)

    @field_validator("propagation_edge_factors")
    @classmethod
    def _edge_factors(cls, v: dict[str, float]) -> dict[str, float]:
        types = ("account_device", "account_ip", "account_card", "card_merchant", "account_merchant",
                 "transfer")  # graph.build.EDGE_TYPES
        unknown = sorted(set(v) - set(types))
        bad = sorted(k for k, x in v.items() if x < 0)
        if unknown or bad:
            raise ValueError(f"edge types are {list(types)}; unknown {unknown}, negative {bad}")
        return v
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {
            "account": 0.95, "device": 0.95, "ip": 0.5, "card": 0.5, "merchant": 0.8,
        }
    )
    list_ttl_days: int = Field(7, ge=1)
    evidence: EvidenceConf = EvidenceConf()
    weights: EntityWeights = EntityWeights()
    ring: RingScoreConf = RingScoreConf()
    # An entity outside every listed ring needs at least this score (and its type's threshold).
    lone_min_score: float = Field(0.8, ge=0.0, le=1.0)
    # A ring or entity is typed mule/card_testing only with at least this much family evidence.
    type_min_evidence: float = Field(0.05, ge=0.0, le=1.0)
    # A ring's mule vote adds this x its money-flow evidence (ring.money_flow).
    type_money_flow: float = Field(0.25, ge=0.0)
    # A fraud/mule/card_testing label from one of these sources, latest usable before the cut-off, lists
    # the entity on its own with at least trusted_label_score (a confirmed case: online scorers expect it).
    # Labels from other sources (customer reports, chargebacks) are evidence only: they can be wrong.
    # A legit label from one of these sources clears the entity: it is not listed, whatever its score.
    trusted_label_sources: list[str] = Field(default_factory=lambda: ["investigator"])
    trusted_label_score: float = Field(0.99, ge=0.0, le=1.0)
    # Propagated risk below this is not given as a reason.
    reason_min_propagated: float = Field(0.1, ge=0.0, le=1.0)
    # entity_scores/ keeps entities scoring at least this, and every listed or labelled entity and every
    # member or link of a listed ring; 0 keeps every scored entity (graph/score.py, "Stored scores").
    entity_scores_min_score: float = Field(0.01, ge=0.0, le=1.0)

    @field_validator("thresholds")
    @classmethod
    def _thresholds_cover_types(cls, v: dict[str, float]) -> dict[str, float]:
        types = ("account", "device", "ip", "card", "merchant")  # graph.schema.ENTITY_TYPES
        unknown = sorted(set(v) - set(types))
        missing = [t for t in types if t not in v]
        bad = sorted(k for k, x in v.items() if not 0.0 <= x <= 1.0)
        if unknown or missing or bad:
            raise ValueError(f"needs one threshold in [0, 1] per entity type {list(types)}; "
                             f"unknown {unknown}, missing {missing}, out of range {bad}")
        return v


class ExportConf(_Section):
    schema_version: str = "1"
    formats: list[Literal["parquet", "jsonl.gz"]] = Field(
        default_factory=lambda: ["parquet", "jsonl.gz"]
    )
    # Diff: a score moving by more than this counts as "score changed".
    score_change_epsilon: float = Field(1e-9, ge=0.0)


class RedisConf(_Section):
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    username: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    namespace: str = "ringfence"
    keep_versions: int = Field(3, ge=1)
    # The circuit breaker: refuse to switch when the list changes by more than this.
    max_change_fraction: float = Field(0.5, ge=0.0)
    pipeline_batch: int = Field(5000, ge=1)
    # Circuit breaker on composition: total variation distance of the shares by
    # entity type and by ring type versus the live version.
    max_composition_change: float = Field(0.3, ge=0.0, le=1.0)
    socket_timeout_s: float = Field(5.0, gt=0.0)
    # Scorer client: re-read the live pointer at most this often (0 = every call).
    client_refresh_ms: int = Field(1000, ge=0)


class RingfenceConfig(_Section):
    spark: SparkConf = SparkConf()
    pipeline: PipelineConf = PipelineConf()
    validation: ValidationConf = ValidationConf()
    hubs: HubConf = HubConf()
    rings: RingConf = RingConf()
    candidates: CandidateConf = CandidateConf()
    scoring: ScoringConf = ScoringConf()
    export: ExportConf = ExportConf()
    redis: RedisConf = RedisConf()


# Environment variables that override paths (never secrets in YAML).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "RINGFENCE_SPARK_MASTER": ("spark", "master"),
    "RINGFENCE_CHECKPOINT_DIR": ("spark", "checkpoint_dir"),
    "RINGFENCE_JARS_DIR": ("spark", "jars_dir"),
    "RINGFENCE_REDIS_HOST": ("redis", "host"),
    "RINGFENCE_REDIS_PORT": ("redis", "port"),
}

SECRET_KEYS = {"password", "hmac_key", "signing_key", "secret", "token"}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, found {type(data).__name__}")
    _reject_secrets(path, data, "")
    return data


def _reject_secrets(path: Path, data: dict[str, Any], prefix: str) -> None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if str(k).lower() in SECRET_KEYS:
            raise ConfigError(
                f"{path}: key '{key}' looks like a secret; secrets come from the environment only"
            )
        if isinstance(v, dict):
            _reject_secrets(path, v, key + ".")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> RingfenceConfig:
    """Load ``conf/default.yaml``, merge ``path`` over it, apply env overrides, validate."""
    env = dict(os.environ) if env is None else env
    data = _read_yaml(DEFAULT_CONF)
    source = DEFAULT_CONF
    if path is not None:
        source = Path(path)
        data = _merge(data, _read_yaml(source))
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env:
            data.setdefault(section, {})[key] = env[var]
    try:
        cfg = RingfenceConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"key '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
    jars = cfg.spark.jars_dir
    if jars and path is not None and "jars_dir" in data.get("spark", {}):
        if not resolve_path(jars).is_dir():
            raise ConfigError(f"{source}: key 'spark.jars_dir': no such directory {resolve_path(jars)}")
    return cfg


def resolve_path(p: str) -> Path:
    """A config path: absolute as given, relative to the repo root otherwise."""
    path = Path(p)
    return path if path.is_absolute() else REPO_ROOT / path
