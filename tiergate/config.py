"""Typed configuration: one YAML file (``tiergate.yaml``) plus environment overrides.

Paths in the file are relative to the file's folder. Validation happens at load, and errors name the key and
the fix. Environment overrides: ``TIERGATE_<SECTION>__<KEY>`` for the ``server`` section (for example
``TIERGATE_SERVER__MAX_INFLIGHT=64``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiergate.errors import ConfigError
from tiergate.registry import tier_kinds

# Documented default prices per hour of hardware (USD). CPU: one 2-vCPU cloud instance of the kind these
# figures are measured on (e.g. AWS c7i.large on demand, about 0.09 USD/h). GPU: one H200 rented by the hour.
DEFAULT_HARDWARE = {"cpu-2core": 0.09, "h200": 3.50}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostConfig(_Strict):
    """A tier's measured cost per item, and how it was measured (written by ``tiergate calibrate``)."""

    seconds_per_item: float = 0.0          # compute seconds per item (the fastest timed batch: tiergate.cost)
    batch_size: int = 32                   # batch size it was measured at
    usd_per_hour: float = 0.0              # price of the hardware it ran on
    fixed_usd_per_call: float = 0.0        # optional price per item sent to the tier (e.g. an API fee)
    measured: str = ""                     # how and where: machine, sample size, date
    median_seconds_per_item: float | None = None  # the median of the timed batches, for the record
    spread: float | None = None            # slowest / fastest timed batch: how noisy the measurement was
    pinned: bool = False                   # set by the operator: `tiergate calibrate` keeps this cost as it is

    @property
    def usd_per_item(self) -> float:
        return self.seconds_per_item * self.usd_per_hour / 3600.0 + self.fixed_usd_per_call


class Thresholds(_Strict):
    """Confidence needed for a tier to decide: ``default``, optionally overridden per predicted class."""

    default: float = 1.01                  # above 1: never decides until calibrated
    per_class: dict[str, float] = Field(default_factory=dict)

    def for_label(self, label: str | None) -> float:
        if label is None:
            return float("inf")
        return self.per_class.get(label, self.default)


class RemoteConfig(_Strict):
    """A tier served by another server (``kind: remote``): the KServe v2 / Open Inference Protocol over HTTP,
    as Triton Inference Server, KServe and ``tiergate serve --tier NAME --protocol kserve-v2`` speak it."""

    protocol: Literal["kserve-v2", "openai"] = "kserve-v2"
    url: str = Field(pattern=r"^https?://")   # the server's base URL, e.g. http://gpu-fleet:8000 (openai: .../v1)
    model: str                                # the model name on that server
    timeout_s: float = Field(default=10.0, gt=0)      # one request (one batch)
    retries: int = Field(default=1, ge=0)             # more attempts after a connection error, 429 or 5xx
    token_env: str | None = None              # an environment variable holding a bearer token to send
    # protocol openai (an OpenAI-compatible chat endpoint as the final tier): the prompt ({labels} and {text}
    # are filled in), the price per token, and how many items are asked about at once
    prompt: str = ("Classify the text into exactly one of these labels: {labels}. Answer with the label only.\n\n"
                   "Text:\n{text}")
    usd_per_input_token: float = Field(default=0.0, ge=0)
    usd_per_output_token: float = Field(default=0.0, ge=0)
    max_text_chars: int = Field(default=8000, ge=1)     # of each item's text put in the prompt
    concurrency: int = Field(default=4, ge=1)           # chat calls of one batch in flight at once
    labels: list[str] = Field(default_factory=list)     # openai: the label set (default: the config's labels)


class TierConfig(_Strict):
    name: str
    kind: str                              # a registered kind (tiergate.registry): rules, onnx, torch, remote, ...
    path: str = ""                         # the artifact (kinds that read one: rules, onnx, torch)
    hardware: str = "cpu-2core"
    threshold: Thresholds = Field(default_factory=Thresholds)
    cost: CostConfig = Field(default_factory=CostConfig)
    remote: RemoteConfig | None = None     # kind: remote (its keys may also be given on the tier itself)
    runtime: Literal["auto", "torch", "onnx"] = "auto"  # kind torch, a fine-tuned artifact: onnxruntime over
                                           # the graph exported at load, or eager torch (auto: onnx on CPU)

    @model_validator(mode="before")
    @classmethod
    def _flat_remote(cls, raw: Any) -> Any:
        """``{kind: remote, protocol, url, model, ...}`` on the tier itself means the same as a ``remote:``
        section (the spelling of the KServe examples); both at once is an error."""
        if not isinstance(raw, dict) or raw.get("kind") != "remote":
            return raw
        flat = {k: raw[k] for k in RemoteConfig.model_fields if k in raw}
        if not flat:
            return raw
        if raw.get("remote") is not None:
            raise ValueError(f"tier {raw.get('name')}: give {sorted(flat)} either on the tier or under `remote:`, "
                             "not both")
        return {**{k: v for k, v in raw.items() if k not in flat}, "remote": flat}

    @model_validator(mode="after")
    def _what_it_reads(self) -> TierConfig:
        from tiergate.registry import needs_path

        if needs_path(self.kind) and not self.path:
            raise ValueError(f"tier {self.name}: kind {self.kind} reads an artifact: give its `path`")
        if self.kind == "remote" and self.remote is None:
            raise ValueError(f"tier {self.name}: kind remote needs a `remote:` section (protocol, url, model)")
        return self

    @property
    def is_chat(self) -> bool:
        return self.kind == "remote" and self.remote is not None and self.remote.protocol == "openai"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not v.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"tier name {v!r} must be letters, digits, '-' or '_'")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in tier_kinds():
            raise ValueError(f"unknown tier kind {v!r}: use one of {', '.join(tier_kinds())} (a plugin adds more "
                             "with tiergate.registry.register_tier_kind before the config is loaded)")
        return v


class TierServing(_Strict):
    """How the gateway runs one tier: a queue, a batcher gathering items across requests, one executor."""

    max_batch: int = Field(default=64, ge=1)          # items per predict() call, gathered across requests
    max_wait_ms: float = Field(default=0.0, ge=0)     # 0: run what is queued as soon as the tier is idle
    max_queue_items: int | None = Field(default=None, ge=1)  # items waiting; None: 4 x max_batch
    # Work waiting, in seconds of this tier's measured compute: beyond it new requests get 429. Keeps the
    # latency of accepted requests bounded under overload (a queue in items alone is 25x longer on a tier 25x
    # slower).
    max_queue_ms: float = Field(default=1000.0, gt=0)
    timeout_ms: float = Field(default=30_000, gt=0)   # one batch longer than this counts as a failure
    threads: int = Field(default=1, ge=1)             # batches of this tier run at once
    # Where batches run: "process" (a child process with its own copy of the tier), "thread" (a thread of the
    # gateway's process), "inline" (the event loop, 8 items between yields). "auto": tiers declared light
    # (rules) inline, the others in a process, since their Python work holds the GIL and starves the loop.
    executor: Literal["auto", "process", "thread", "inline"] = "auto"

    @property
    def queue_limit(self) -> int:
        return self.max_queue_items if self.max_queue_items is not None else 4 * self.max_batch


class BreakerConfig(_Strict):
    """A tier's circuit breaker: open after ``failures`` consecutive failed batches, try again after
    ``cooldown_s`` (half-open: one batch), close on its success."""

    failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=5.0, gt=0)


Privilege = Literal["final_only", "epsilon"]


class ApiKey(_Strict):
    """A client of ``/v1/*``: the key is stored only as its SHA-256 (``tiergate keys new`` makes one)."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    privileges: list[Privilege] = Field(default_factory=list)


class ServerConfig(_Strict):
    max_inflight: int = Field(default=512, ge=1)      # requests in progress at once; more are answered 429
    max_batch_items: int = Field(default=256, ge=1)   # items per request
    max_text_chars: int = 200_000          # characters read per item
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # checked before parsing (413); 64 texts of 10 KB fit
    request_timeout_s: float = 30.0        # the longest deadline a client may ask for
    default_deadline_ms: float = Field(default=10_000, gt=0)  # a request's deadline when it names none
    body_timeout_s: float = Field(default=10.0, gt=0)  # a body not received within this is answered 408
    # A request that waited longer than this on the event loop between being read and being handled is
    # answered 429 at once (the loop is the bottleneck: see tiergate.gateway.protocol); the limit adapts
    # (halved while refusals go on), and the wait counts against the request's deadline.
    max_loop_wait_ms: float = Field(default=50.0, gt=0)
    # Requests this worker has read and not yet answered; a classify request beyond it is answered 429 as
    # soon as its headers are read, by the HTTP protocol itself (no handler, no body parse: the cheapest
    # refusal there is, for floods of cheap traffic; tiergate.gateway.protocol). 0 turns it off.
    max_open_requests: int = Field(default=0, ge=0)
    # The event loop's time that the classify requests admitted in one turn may take (measured per request
    # while the loop is busy); beyond it, and once loop_budget_min_open are open, a request is answered 429 by
    # the HTTP protocol as soon as its headers are read, so a flood of cheap traffic costs header parses and
    # every turn stays short (tiergate.gateway.protocol.LoopBudget). 0 turns it off.
    loop_budget_ms: float = Field(default=5.0, ge=0)
    # ... applied once this many requests of the worker are open (fewer: always admitted). Lower than
    # min_open_requests on purpose: at 3x capacity a floor of 32 let 32 requests' work into every turn
    # (40-50 ms turns, 429s in 0.2-0.5 s); with 8, turns of 5-25 ms and 429s in about 0.1 s. The price: a
    # client that keeps more than 8 requests open and ignores Retry-After gets 429s at capacity, most of its
    # requests if it resends at once (docs/benchmarks.md).
    loop_budget_min_open: int = Field(default=8, ge=0)
    # asyncio's own loop, not uvloop: under load uvloop accepted about one new connection per turn of the loop
    # (measured: 1,000 connections waited 5-18 s to be accepted while the gateway served 1,800 req/s, so
    # health checks on new connections took seconds), where asyncio's accepts every waiting one at once.
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    # Once the models and rules are loaded, move every object alive then out of the collector's reach
    # (gc.freeze): the oldest generation's collections then walk only what requests allocate, not the whole
    # heap of tokenizers, rule tables and configuration (tiergate_gc_pause_seconds shows the pauses).
    gc_freeze: bool = True
    # ... and no request is refused for its wait on the loop while at most this many are open: a closed-loop
    # client with that many connections waits behind its own requests, which is not overload.
    min_open_requests: int = Field(default=32, ge=0)
    keepalive_timeout_s: float = Field(default=5.0, gt=0)  # idle keep-alive connections are closed after it
    shutdown_grace_s: float = Field(default=20.0, ge=0)  # in-flight requests get this long to finish
    on_final_tier_failure: Literal["answer_cheaper", "fail"] = "answer_cheaper"
    batching: TierServing = Field(default_factory=TierServing)           # every tier's defaults
    tiers: dict[str, TierServing] = Field(default_factory=dict)          # per tier, replacing the defaults
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    api_keys: list[ApiKey] = Field(default_factory=list)  # empty: /v1/* is open to anyone
    # Privileges every caller has without a key. Forcing items onto the final tier is a cost lever, so it is
    # off unless the operator grants it (quickstart's config grants both, for trying things out).
    anonymous_privileges: list[Privilege] = Field(default_factory=list)

    def serving_of(self, tier: str) -> TierServing:
        """The batching defaults with the tier's own settings on top (only the keys it sets)."""
        own = self.tiers.get(tier)
        if own is None:
            return self.batching
        return self.batching.model_copy(update=own.model_dump(exclude_unset=True))


class Redaction(_Strict):
    """One redaction step: every match of ``pattern`` (the ``regex`` package's syntax) becomes ``replacement``."""

    pattern: str
    replacement: str = "<redacted>"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        import regex

        try:
            regex.compile(v)
        except regex.error as e:
            raise ValueError(f"redaction pattern {v!r} does not compile: {e}") from e
        return v


# Mail is personal data: what the log keeps of a text is redacted first. The defaults catch addresses and long
# digit runs (phone, account and card numbers); an operator adds their own (docs/privacy.md).
DEFAULT_REDACTIONS = [
    Redaction(pattern=r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", replacement="<email>"),
    Redaction(pattern=r"(?<!\w)\+?\d[\d ()./-]{6,}\d(?!\w)", replacement="<number>"),
]


class SampleText(_Strict):
    """Keep the text of this share of decisions, chosen at random."""

    sample: float = Field(gt=0, le=1)


class LogConfig(_Strict):
    """The decision log (tiergate.decisionlog): every decision, durably, in an embedded SQLite database."""

    enabled: bool = True
    path: str = "decisions.db"              # relative to the config file's folder
    # or a PostgreSQL database shared by several gateways (extra tiergate[postgres]): postgresql://user@host/db,
    # given here or, to keep a password out of the file, in the environment variable `url_env` names
    url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    url_env: str | None = None
    # Which texts are kept (redacted): none (the default: only a hash), escalated (items a tier passed on),
    # {sample: 0.01}, or all. Retraining from the log needs text.
    store_text: Literal["none", "escalated", "all"] | SampleText = "none"
    redact: list[Redaction] = Field(default_factory=lambda: list(DEFAULT_REDACTIONS))
    retention_days: float = Field(default=30.0, gt=0)    # older decisions (and their feedback) are deleted
    retention_rows: int = Field(default=5_000_000, ge=1)  # beyond this many, the oldest are deleted
    commit_interval_ms: float = Field(default=2.0, ge=0)  # group commit: writes gathered this long share one
    max_queue: int = Field(default=200_000, ge=1)        # decisions waiting for the writer; beyond: dropped, counted
    # "full": every commit reaches the disk before feedback is acknowledged (survives power loss); "normal":
    # survives a killed process, not a lost machine (SQLite's WAL modes).
    synchronous: Literal["normal", "full"] = "full"


class ShadowAuditConfig(_Strict):
    """Shadow audits: a share of the items a cheaper tier decided is also sent to the final tier, off the
    request path, to watch the certificate's guarantee on live traffic."""

    share: float = Field(default=0.02, ge=0, le=1)    # of the items each cheaper tier decides
    max_per_s: float = Field(default=10.0, gt=0)      # at most this many audits a second (they cost money)
    max_queue: int = Field(default=256, ge=1)         # audits waiting; beyond: dropped and counted
    max_batch: int = Field(default=8, ge=1)           # audits sent to the final tier at once, only when it is idle


class MetricsConfig(_Strict):
    """What /metrics exposes beyond the defaults (deploy/prometheus reads these)."""

    savings_target: float = Field(default=0.5, ge=0, le=1)  # the share of the all-to-final cost to save; alerted below
    top_labels: int = Field(default=20, ge=1)    # `label` label: the first N of `labels`, the rest as "other"
    label_values: list[str] | None = None        # or exactly these (the rest as "other")
    status_sample_s: float = Field(default=5.0, gt=0)   # how often the status page's plots take a point


class RayAutoscaling(_Strict):
    """Ray Serve's autoscaling of a tier's replicas (its ``autoscaling_config``)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)


class RayConfig(_Strict):
    """A tier on Ray Serve (``tiergate serve --tier NAME --engine ray``; extra tiergate[ray])."""

    num_replicas: int = Field(default=1, ge=1)          # without autoscaling
    num_cpus: float = Field(default=1.0, ge=0)          # per replica
    num_gpus: float = Field(default=0.0, ge=0)          # per replica: 1 puts each replica on a GPU of its own
    max_batch_size: int = Field(default=32, ge=1)       # @serve.batch: items gathered across requests
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)
    autoscaling: RayAutoscaling | None = None


class TiergateConfig(_Strict):
    version: int = 1
    dataset: str = ""                      # the data set the models were trained on (informational)
    labels: list[str] = Field(default_factory=list)
    hardware: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_HARDWARE))  # USD per hour
    tiers: list[TierConfig]
    model_dirs: list[str] = Field(default_factory=list)  # folders besides this file's that tier paths may lie
                                                         # in, relative to this file's folder (tiergate.registry)
    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    shadow_audit: ShadowAuditConfig = Field(default_factory=ShadowAuditConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    calibration: dict[str, Any] = Field(default_factory=dict)   # how thresholds were chosen
    certificate: dict[str, Any] | None = None

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: list[TierConfig]) -> list[TierConfig]:
        if not v:
            raise ValueError("at least one tier is needed")
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique (got {names})")
        if v[-1].kind == "rules":
            raise ValueError("the last tier must be a model: it always decides, and a rule set cannot")
        for tc in v[:-1]:
            if tc.is_chat:
                raise ValueError(f"tier {tc.name}: protocol openai serves only as the final tier (a chat answer "
                                 "carries no calibrated confidence for a threshold to act on)")
        return v

    @model_validator(mode="after")
    def _chat_labels(self) -> TiergateConfig:
        for tc in self.tiers:
            if tc.is_chat and not tc.remote.labels:  # type: ignore[union-attr]
                if not self.labels:
                    raise ValueError(f"tier {tc.name}: an openai tier needs the label set (`labels:` in the config, "
                                     "or remote.labels)")
                tc.remote.labels = list(self.labels)  # type: ignore[union-attr]
        return self

    @model_validator(mode="after")
    def _server_tiers(self) -> TiergateConfig:
        unknown = set(self.server.tiers) - {t.name for t in self.tiers}
        if unknown:
            raise ValueError(f"server.tiers names {sorted(unknown)}, which are not tiers of this config "
                             f"(tiers: {[t.name for t in self.tiers]})")
        return self


def load_config(path: str | Path) -> tuple[TiergateConfig, Path]:
    """Load and validate ``path``; returns the config and its folder (the base of relative paths)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file; `tiergate quickstart` writes one") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a `tiers` list")
    _apply_env(raw)
    try:
        cfg = TiergateConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: " + ".".join(str(p) for p in err["loc"]) + f": {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from e
    return cfg, path.parent


def _apply_env(raw: dict) -> None:
    prefix = "TIERGATE_SERVER__"
    for key, value in os.environ.items():
        if key.startswith(prefix):
            raw.setdefault("server", {})[key[len(prefix):].lower()] = yaml.safe_load(value)


def save_config(cfg: TiergateConfig, path: str | Path) -> None:
    """Write atomically (a crash never leaves half a config)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False),
                   encoding="utf-8")
    os.replace(tmp, path)
