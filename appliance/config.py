"""Configuration: ``appliance.toml`` read once into typed, frozen dataclasses.

Every setting is declared here, once, with its default and its allowed range.
Loading refuses unknown sections and keys, wrong types and values out of range,
with a message naming the file, the key and what was expected.  The rest of the
code receives these objects, never dicts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file and key."""


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=_range(1, 65535))
    client_id: str = "appliance"
    qos: int = field(default=1, metadata=_range(0, 2))
    topic_prefix: str = "plant"
    username: str = ""
    #: Only in a file no one else can read (mode o-rwx), else refused at load: prefer
    #: ``password_file`` or, under systemd, the credential ``mqtt_password``
    #: (``LoadCredential=``), which wins over both.
    password: str = ""
    #: A file holding the password (its first line), e.g. mode 0600.
    password_file: str = ""
    #: PEM CA certificate that signed the broker's: set, the connection uses TLS.
    tls_ca: str = ""
    #: PEM client certificate and its key, for a broker with ``require_certificate``.
    tls_cert: str = ""
    tls_key: str = ""
    keepalive_s: int = field(default=30, metadata=_range(5, 3600))
    #: How long the broker keeps our session (and queues readings) while we are away.
    session_expiry_s: int = field(default=7 * 24 * 3600, metadata=_range(0))
    #: MQTT v5 Receive Maximum: how many unacknowledged messages the broker may send us.
    receive_maximum: int = field(default=50_000, metadata=_range(1, 65535))
    reconnect_min_s: int = field(default=1, metadata=_range(1, 3600))
    reconnect_max_s: int = field(default=30, metadata=_range(1, 3600))


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = "/var/lib/appliance/appliance.duckdb"
    #: A batch is committed when it holds this many messages ...
    batch_messages: int = field(default=10_000, metadata=_range(1, 60_000))
    #: ... or when its oldest message has waited this long.
    batch_ms: int = field(default=100, metadata=_range(1, 60_000))
    #: DuckDB's buffer cap; appends need little, and on a gateway the rest is better free.
    memory_limit: str = "32MB"
    retry_min_s: float = field(default=0.2, metadata=_range(0.0, lo_open=True))
    retry_max_s: float = field(default=10.0, metadata=_range(0.0, lo_open=True))
    # -- disk and retention (``stages/maintenance.py``; README "Disk and retention") --
    #: Readings older than this (event time, before the newest reading) are deleted;
    #: 0 = no age limit (``max_disk_mb`` still bounds them).  At least the retraining
    #: loop's ``history_days + holdout_days`` plus a day of warm-up while it is on.
    keep_readings_days: float = field(default=90.0, metadata=_range(0.0))
    #: Predictions older than this are deleted; 0 = no age limit.
    keep_predictions_days: float = field(default=365.0, metadata=_range(0.0))
    #: Predictions are kept at full rate this long, then thinned: only those within one
    #: horizon of an alert or fault of their asset, or at or above threshold × clear_ratio,
    #: stay whole; of the rest, one per asset and model per ``thin_predictions_every_s``
    #: (the highest).  At least the live scores' 30 days and the shadow/probation periods.
    thin_predictions_after_days: float = field(default=30.0, metadata=_range(0.0))
    thin_predictions_every_s: float = field(default=600.0, metadata=_range(1.0, 86400.0))
    #: Dead letters (``received_at``, wall-clock time) older than this are deleted.
    keep_dead_letters_days: float = field(default=30.0, metadata=_range(0.0, lo_open=True))
    #: The database file and its log may use this much disk; 0 = half the size of the
    #: file system holding the database (resolved at start, shown in the status).  At
    #: 80 % the status warns; at 90 % the oldest readings are deleted early, but never
    #: those newer than ``min_keep_readings_days``.
    max_disk_mb: int = field(default=0, metadata=_range(0))
    min_keep_readings_days: float = field(default=3.0, metadata=_range(0.0))
    #: A checkpoint (the log written into the file) at least this often: a damaged log
    #: loses what was committed since the last one (README "Disk and retention").
    checkpoint_every_s: float = field(default=60.0, metadata=_range(1.0, 86400.0))
    #: ... and whenever the log reaches this size (DuckDB's ``checkpoint_threshold``).
    checkpoint_wal_mb: float = field(default=8.0, metadata=_range(0.0625, 1024.0))


@dataclass(frozen=True, slots=True)
class SensorConfig:
    """``[pipeline.sensors.<name>]``: one sensor's validity check and its overrides.

    A reading outside [valid_min, valid_max], or changing faster than
    ``max_rate_per_s`` since the sensor's last valid reading, is invalid: it stays
    stored but the features treat it as absent.  The other keys, when given,
    replace ``[pipeline]``'s value for this sensor only.
    """

    valid_min: float = -math.inf
    valid_max: float = math.inf
    #: Largest absolute change per second between consecutive valid readings.
    max_rate_per_s: float = field(default=math.inf, metadata=_range(0.0, lo_open=True))
    hampel_window_s: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    hampel_k: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    clean: bool | None = None
    max_gap_s: float | None = field(default=None, metadata=_range(0.0))
    max_gap_intervals: float | None = field(default=None, metadata=_range(0.0))


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    #: Event-time seconds between two predictions of one asset (the grid step).
    cadence_s: float = field(default=10.0, metadata=_range(0.1, 86400.0))
    horizon_s: float = field(default=3600.0, metadata=_range(1.0))
    #: A sensor's last value is carried forward this long, then it is missing ...
    max_gap_s: float = field(default=300.0, metadata=_range(0.0))
    #: ... or this many of its typical intervals between readings (the median of its
    #: last five) when that is longer, so a sensor read once an hour is not missing
    #: most of the hour; 0 = max_gap_s alone.
    max_gap_intervals: float = field(default=3.0, metadata=_range(0.0))
    #: An asset silent this long is idle: no rows for the silence, and its features
    #: start afresh at its next reading (a line stopped over a weekend); 0 = never.
    idle_gap_s: float = field(default=6 * 3600.0, metadata=_range(0.0))
    #: After an asset's data starts (or restarts after an idle gap) its windows fill
    #: for this long before it is predicted on, trained on or scored: a window still
    #: filling tells the time since a restart, not the machine's health.  Unset = the
    #: time the longest window takes to fill (its span and one of its grid points:
    #: 1 h 2 min at the defaults); 0 = from the first tick.
    warmup_s: float | None = field(default=None, metadata=_range(0.0))
    #: At a service start each asset's features are replayed from its stored readings
    #: of this span before its last one, so its windows are as a service that never
    #: stopped left them.  Unset = the warm-up and a tick (every window full again;
    #: a shorter span is raised to that); the EWMAs (``missing``, ``dev``) converge
    #: from the span's start, to within 2^-n after n of their half-lives.  0 = start
    #: cold (with a warm-up).
    restore_s: float | None = field(default=None, metadata=_range(0.0))
    #: Rolling windows, in seconds of event time; empty means scaled to the horizon.
    windows_s: tuple[float, ...] = ()
    #: Cleaning on the grid: a Hampel filter replaces a value more than ``hampel_k``
    #: scaled MADs from the median of its trailing window by that median.
    clean: bool = True
    hampel_window_s: float = field(default=120.0, metadata=_range(0.0, lo_open=True))
    hampel_k: float = field(default=3.0, metadata=_range(0.0, lo_open=True))
    #: Half-life of the long baseline a sensor's deviation is measured from.
    baseline_halflife_s: float = field(default=6 * 3600.0, metadata=_range(0.0, lo_open=True))
    #: Cross-sensor differences, e.g. [["lube_temp", "ambient_temp"]].
    differences: tuple[tuple[str, ...], ...] = ()
    #: ``[pipeline.sensors.<name>]`` tables, as (sensor, settings) pairs in file order;
    #: a sensor without one gets the settings above and no validity limits.
    sensors: tuple[tuple[str, SensorConfig], ...] = ()

    def effective_windows(self) -> tuple[float, ...]:
        if self.windows_s:
            return self.windows_s
        return (self.horizon_s / 6.0, self.horizon_s)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    #: The model served while the registry has no active model; empty = the starter
    #: model shipped in the package.
    path: str = ""
    #: Refuse to start when no model can be loaded.  false: start anyway, store readings
    #: and compute features, predict nothing until a model is promoted (a new line
    #: collecting history before any model exists); the log and the status say so.
    required: bool = True
    #: The registry folder (``appliance models``); empty = "models" beside the database.
    dir: str = ""
    #: How often the service looks for a newly promoted or dropped-in model.
    poll_s: float = field(default=2.0, metadata=_range(0.1, 3600.0))
    #: Challengers served beside the champion (``appliance models shadow``): each costs
    #: one more onnxruntime call per tick, so the registry refuses more than this.
    max_challengers: int = field(default=2, metadata=_range(0, 16))
    #: How often the service looks for new fault events to rescore every model with
    #: (``model_scores``); a rescore reads up to 30 days of predictions, so not per fault.
    scores_every_s: float = field(default=60.0, metadata=_range(1.0, 86400.0))


#: An alarm clears below threshold × this (hysteresis); ``[alerts] clear_ratio``.
DEFAULT_CLEAR_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    topic_prefix: str = "appliance"
    #: Raise at this probability; 0 means "use the threshold stored in the model".
    threshold: float = field(default=0.0, metadata=_range(0.0, 1.0))
    #: Clear when the probability falls below threshold × clear_ratio (hysteresis).
    clear_ratio: float = field(default=DEFAULT_CLEAR_RATIO, metadata=_range(0.0, 1.0))
    top_factors: int = field(default=3, metadata=_range(0, 50))
    #: A raised alert with no prediction of its asset for this long (wall clock; at a
    #: start, counted from the asset's last stored reading) is cleared: nothing backs
    #: it any more.  Unset = the pipeline's horizon (what the alert foretold is due).
    quiet_s: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    #: ``appliance train`` and ``backtest`` choose the threshold with the best recall
    #: whose false alarm episodes per asset-week stay at or below this, on validation.
    max_false_per_asset_week: float = field(default=1.0, metadata=_range(0.0))


@dataclass(frozen=True, slots=True)
class QueuesConfig:
    #: Bound of every inter-stage queue, in messages (each may carry a batch).
    size: int = field(default=64, metadata=_range(1, 100_000))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_payload_bytes: int = field(default=64 * 1024, metadata=_range(16))
    max_series: int = field(default=100_000, metadata=_range(1))
    max_future_s: float = field(default=300.0, metadata=_range(0.0))
    max_past_s: float = field(default=10 * 365 * 86400.0, metadata=_range(0.0))


@dataclass(frozen=True, slots=True)
class StatusConfig:
    topic: str = "appliance/status"
    interval_s: float = field(default=5.0, metadata=_range(0.1))


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """When the service calls itself degraded (``appliance status`` exits non-zero)."""

    #: A stage with input waiting that has made no progress this long is hung; a hung
    #: essential stage (ingest, store) stops feeding the systemd watchdog.
    hung_after_s: float = field(default=60.0, metadata=_range(1.0))
    #: Without an MQTT connection this long (broker down, refusing us), ingest is
    #: degraded; a shorter outage is a reconnect, not a problem.
    mqtt_down_after_s: float = field(default=10.0, metadata=_range(0.0))


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """``[control]``: the service's socket for ``appliance sql`` and ``appliance export``
    while it runs (``service/control.py``)."""

    #: The Unix socket (mode 0660, the service's group); empty = "appliance.sock" beside
    #: the database file.
    socket: str = ""
    #: Rows a query returns at most (``appliance sql --limit`` asks for fewer).
    max_rows: int = field(default=10_000, metadata=_range(1, 10_000_000))
    #: A query still running after this long is interrupted (``--timeout`` asks for less).
    timeout_s: float = field(default=30.0, metadata=_range(0.0, 3600.0, lo_open=True))


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """``[drift]``: watching the model's inputs (``stages/drift.py``, ``models/drift.py``).

    Per (asset, feature) the last ``window_s`` of feature rows, one sampled every
    ``sample_s``, is compared with the serving model's reference by PSI; an event
    needs the distance above its threshold for ``persist_s``.  A model trained
    here carries a calibration of its threshold; the window settings are then the
    calibration's (the threshold holds only for them) and these apply to training.
    """

    enabled: bool = True
    #: Expected drift events per 30 days on data like the model's held-out period, for
    #: the whole gateway (every feature of every asset together).
    max_false_per_month: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    #: A day, so a daily cycle (ambient temperature, shifts) is inside every window.
    window_s: float = field(default=86400.0, metadata=_range(60.0))
    sample_s: float = field(default=600.0, metadata=_range(1.0))
    persist_s: float = field(default=3600.0, metadata=_range(0.0))
    #: A model without a calibration (the starter, a file dropped in): this PSI, twice
    #: the 0.25 rule of thumb for a major shift, held for this long.
    uncalibrated_psi: float = field(default=0.5, metadata=_range(0.0, lo_open=True))
    uncalibrated_persist_s: float = field(default=2 * 3600.0, metadata=_range(0.0))
    #: A sensor whose value is missing (past its carry limit) this long is silent.
    sensor_silent_s: float = field(default=600.0, metadata=_range(0.0))
    #: A sensor whose missing fraction reaches this (and is not silent) is mostly missing.
    sensor_missing: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    #: Features named in a drift event, most moved first.
    top_features: int = field(default=5, metadata=_range(1, 100))


#: The model families of ``appliance train`` (``--family``), each with the family name
#: a model records in its metadata: the one table of families.
FAMILIES: dict[str, str] = {"gbt": "hist_gradient_boosting", "logistic": "logistic_regression"}
#: The family trained when none is named.
DEFAULT_FAMILY = "gbt"
#: A backtest's tuned single-sensor limit: a variant family, never a trained model.
STATIC_FAMILY = "static_threshold"
#: Families a backtest variant may use.
VARIANT_FAMILIES: tuple[str, ...] = (*FAMILIES, STATIC_FAMILY)


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """``appliance train`` and ``appliance backtest``: the data set and the time split."""

    #: Ticks left out of training and scoring after a fault ends; unset = one horizon.
    cooldown_s: float | None = field(default=None, metadata=_range(0.0))
    #: The last part of the history (by time) kept for validation, after a gap of one
    #: horizon; the threshold is chosen there.
    validation_fraction: float = field(default=0.25, metadata=_range(0.05, 0.9))
    #: Fit and validate on every n-th tick (features are still computed on the full grid).
    stride: int = field(default=1, metadata=_range(1, 10_000))
    #: Threads for fitting; 0 = all cores (the service is stopped while ``train`` holds
    #: the database).
    threads: int = field(default=0, metadata=_range(0, 256))
    #: Boosting iterations of the gbt family.
    max_iter: int = field(default=100, metadata=_range(1, 10_000))
    #: Training rows a fit uses at most: every positive tick of the training window and
    #: 1 in k of its negative ones (k as small as fits), weighted by ≈ k so that the
    #: probabilities stay calibrated; the validation window is always whole.  What
    #: bounds the memory of `train` (about 0.4 KB a row with ~100 features).
    max_train_rows: int = field(default=200_000, metadata=_range(1_000, 100_000_000))


@dataclass(frozen=True, slots=True)
class RetrainConfig:
    """``[retrain]``: the service retrains, validates, shadows, promotes and rolls back
    by itself (``models/lifecycle.py`` decides, ``stages/retrain.py`` acts).

    Times are event time (the newest prediction's), as the live scores are, so a
    replayed history and the walk-forward backtest run the same rules.
    """

    enabled: bool = True
    #: How often the triggers and the shadow and probation reviews are looked at.
    check_every_s: float = field(default=300.0, metadata=_range(1.0))
    #: Retrain on a schedule, this many days after the last training; 0 = never.
    every_days: float = field(default=7.0, metadata=_range(0.0))
    #: Retrain when this many faults started since the last training; 0 = never.
    min_new_faults: int = field(default=10, metadata=_range(0))
    #: Retrain when a drift event (kind drift) has lasted this long; 0 = never.
    drift_persist_s: float = field(default=6 * 3600.0, metadata=_range(0.0))
    #: Retrain when the champion's live recall (30 days) falls this far below its
    #: validated recall, or its false alarms reach twice the budget; 0 = never.
    score_drop: float = field(default=0.25, metadata=_range(0.0, 1.0))
    #: Live faults needed before live scores may trigger, promote or roll back.
    min_live_faults: int = field(default=3, metadata=_range(1))
    #: ... and this many asset-weeks of live ticks before a shadow or a probation
    #: decides early (before its days are up): over a few hours one false episode
    #: against none decided, and promotions were rolled back within hours.
    min_asset_weeks: float = field(default=1.0, metadata=_range(0.0))
    #: No automatic training sooner than this after the last one started (by hand: any time).
    min_gap_s: float = field(default=12 * 3600.0, metadata=_range(0.0))
    #: The history a candidate is trained on, ending at the holdout.
    history_days: float = field(default=60.0, metadata=_range(1.0))
    #: The recent holdout, after the candidate's data, on which candidate and champion
    #: are compared (event metrics at the budget, the service's alarm rule).
    holdout_days: float = field(default=2.0, metadata=_range(0.1))
    #: A candidate needs recall at least the champion's plus this on the holdout.
    margin: float = field(default=0.0, metadata=_range(-1.0, 1.0))
    #: A challenger is shadowed this long, or until this many faults came, then
    #: promoted if its live scores are at least the champion's, else rejected.
    shadow_days: float = field(default=7.0, metadata=_range(0.0))
    shadow_faults: int = field(default=5, metadata=_range(1))
    #: The shadow while the champion is in drift (a drift event is open): shorter,
    #: because the champion is known to be serving data unlike its training.
    drift_shadow_days: float = field(default=2.0, metadata=_range(0.0))
    #: After an automatic promotion the old champion is shadowed this long; if the new
    #: one scores below it live, the appliance rolls back.
    probation_days: float = field(default=7.0, metadata=_range(0.0))
    #: The training child is killed (and the run recorded as failed) above this RSS.
    max_memory_mb: float = field(default=1536.0, metadata=_range(64.0))
    #: ... or when it runs longer than this.
    timeout_s: float = field(default=4 * 3600.0, metadata=_range(10.0))
    #: CPU priority of the training child (os.nice increment): ingest comes first.
    nice: int = field(default=10, metadata=_range(0, 19))


@dataclass(frozen=True, slots=True)
class VariantConfig:
    """``[variants.<name>]``: a named override of the pipeline spec or the model family.

    A key left out keeps the value of the variant's base: the built-in variant of
    the same name (``full``, ``no_filter``, ``static_threshold``), otherwise
    ``full`` (the configured ``[pipeline]`` with its cleaning step).
    """

    family: str | None = field(default=None, metadata={"choices": VARIANT_FAMILIES})
    #: The cleaning step of ``[pipeline]`` (its Hampel filter): on or bypassed.
    clean: bool | None = None
    hampel_window_s: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    hampel_k: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    cadence_s: float | None = field(default=None, metadata=_range(0.1, 86400.0))
    max_gap_s: float | None = field(default=None, metadata=_range(0.0))
    windows_s: tuple[float, ...] | None = field(default=None,
                                                metadata=_range(0.0, lo_open=True))
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    pipeline: PipelineConfig = PipelineConfig()
    model: ModelConfig = ModelConfig()
    alerts: AlertsConfig = AlertsConfig()
    queues: QueuesConfig = QueuesConfig()
    limits: LimitsConfig = LimitsConfig()
    status: StatusConfig = StatusConfig()
    service: ServiceConfig = ServiceConfig()
    control: ControlConfig = ControlConfig()
    training: TrainingConfig = TrainingConfig()
    drift: DriftConfig = DriftConfig()
    retrain: RetrainConfig = RetrainConfig()
    #: ``[variants.<name>]`` tables, as (name, overrides) pairs in file order.
    variants: tuple[tuple[str, VariantConfig], ...] = ()
    #: The file this was read from ("<defaults>" when built in code).
    source: str = "<defaults>"

    def models_dir(self, db: Path | None = None) -> Path:
        """The registry folder: ``[model] dir``, else "models" beside the database
        (``db`` when a command was given one, else ``[storage] path``)."""
        if self.model.dir:
            return self.resolve(self.model.dir)
        return (Path(db) if db is not None else self.resolve(self.storage.path)).parent / \
            "models"

    def socket_path(self, db: Path | None = None) -> Path:
        """The service's control socket: ``[control] socket``, else "appliance.sock" beside
        the database (``db`` when a command was given one, else ``[storage] path``)."""
        own = self.resolve(self.storage.path)
        # A configured socket is the service's of [storage] path: a command given another
        # database (a copy, say) must not be answered from the live one.
        if self.control.socket and (db is None or Path(db).resolve() == own.resolve()):
            return self.resolve(self.control.socket)
        return (Path(db) if db is not None else own).parent / "appliance.sock"

    def variant(self, name: str) -> VariantConfig | None:
        """The ``[variants.<name>]`` table, or None when the file has none of that name."""
        return dict(self.variants).get(name)

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source.startswith("<"):
            return p
        return Path(self.source).resolve().parent / p


def load(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming file and key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read the config file (it is the service's group's "
                          f"to read: run as a member of it, or with sudo)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    sections = {n: t for n, t in typing.get_type_hints(Config).items() if n != "source"}
    values: dict[str, Any] = {}
    for name, table in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; "
                              f"expected one of: {', '.join(sorted(sections))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        if name == "variants":
            values[name] = _build_tables(table, VariantConfig, source, "variants",
                                         "a variant name", "it names a folder")
            continue
        if name == "pipeline" and "sensors" in table:
            table = dict(table)
            sensors = table.pop("sensors")
            if not isinstance(sensors, dict):
                raise ConfigError(f"{source}: [pipeline] sensors must be a table "
                                  f"([pipeline.sensors.<name>])")
            values[name] = dataclasses.replace(
                _build(PipelineConfig, table, source, name),
                sensors=_build_tables(sensors, SensorConfig, source, "pipeline.sensors",
                                      "a sensor name", "as in MQTT topics"))
            continue
        values[name] = _build(sections[name], table, source, name)
    cfg = Config(**values, source=source)
    _check_cross_field(cfg)
    return _with_mqtt_files(cfg)


#: ``[mqtt]`` keys naming files: made absolute (relative to the config file) at load, and
#: checked to exist then, so a typo is an error at start, not a connect failing for ever.
#: Not checked readable: an operator's command (``appliance sql``, ``status``) loads the
#: same config without the right to read the service's key or password.
MQTT_FILE_KEYS = ("password_file", "tls_ca", "tls_cert", "tls_key")


def _with_mqtt_files(cfg: Config) -> Config:
    src, m = cfg.source, cfg.mqtt
    resolved = {}
    for key in MQTT_FILE_KEYS:
        value = getattr(m, key)
        if not value:
            continue
        path = cfg.resolve(value)
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                raise IsADirectoryError(21, "not a file")
        except OSError as exc:
            raise ConfigError(f"{src}: [mqtt] {key}: cannot read {path}: "
                              f"{exc.strerror or exc}") from None
        resolved[key] = str(path)
    if bool(m.tls_cert) != bool(m.tls_key):
        raise ConfigError(f"{src}: [mqtt] tls_cert and tls_key go together (a client "
                          f"certificate and its key)")
    if m.tls_cert and not m.tls_ca:
        raise ConfigError(f"{src}: [mqtt] tls_cert needs tls_ca (the CA that signed the "
                          f"broker's certificate): a client certificate is sent over TLS only")
    if (m.password or m.password_file) and not m.username:
        raise ConfigError(f"{src}: [mqtt] {'password' if m.password else 'password_file'} "
                          f"needs [mqtt] username")
    if m.password and not src.startswith("<"):
        try:
            mode = Path(src).stat().st_mode
        except OSError:
            mode = 0o777  # unknown: assume the worst
        if mode & 0o007:
            raise ConfigError(
                f"{src}: [mqtt] password: this file is readable by other users "
                f"(mode {mode & 0o777:o}); put the password in a file only the service "
                f"reads and name it in [mqtt] password_file, or give it to systemd as the "
                f"credential mqtt_password (LoadCredential=), or chmod o-rwx {src}")
    return dataclasses.replace(cfg, mqtt=dataclasses.replace(m, **resolved)) if resolved \
        else cfg


def _build(cls: type, table: dict[str, Any], source: str, section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        where = f"{source}: [{section}] {key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{key}' in [{section}]; "
                              f"expected one of: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], where)
        _check_range(kwargs[key], fields[key].metadata, where)
    return cls(**kwargs)


#: Names of lines, assets, sensors and variants: what an MQTT topic level (and a folder
#: name) may hold; ``appliance.mqtt.topics`` and the import's SQL use the same, and the
#: import maps other names onto these characters (``appliance.importer.names``).
NAME_CHARS = r"A-Za-z0-9_.\-"
NAME_MAX = 64
NAME_PATTERN = rf"[{NAME_CHARS}]{{1,{NAME_MAX}}}"
_NAME = re.compile(NAME_PATTERN)


def _build_tables(table: dict[str, Any], cls: type, source: str, section: str,
                  what: str, why: str) -> tuple[tuple[str, Any], ...]:
    """``[<section>.<name>]`` sub-tables of one dataclass, as (name, value) pairs."""
    out = []
    for name, sub in table.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{source}: [{section}.{name}]: {what} is 1-64 "
                              f"characters of A-Z a-z 0-9 _ . - ({why})")
        if not isinstance(sub, dict):
            raise ConfigError(f"{source}: [{section}] {name} must be a table "
                              f"([{section}.{name}])")
        out.append((name, _build(cls, sub, source, f"{section}.{name}")))
    return tuple(out)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, "
                              f"got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        # TOML has no null: None is only ever a default, never a value to accept.
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field type {tp} is not supported")  # a bug in this module


def _check_range(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    if not meta or value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if lo is not None and (v <= lo if meta.get("lo_open") else v < lo):
            op = ">" if meta.get("lo_open") else ">="
            raise ConfigError(f"{where}: expected a value {op} {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ConfigError(f"{where}: expected a value <= {hi}, got {v!r}")


def _check_cross_field(cfg: Config) -> None:
    src = cfg.source
    if cfg.mqtt.reconnect_min_s > cfg.mqtt.reconnect_max_s:
        raise ConfigError(f"{src}: [mqtt] reconnect_min_s must not exceed reconnect_max_s")
    if cfg.storage.batch_messages >= cfg.mqtt.receive_maximum and cfg.mqtt.qos > 0:
        raise ConfigError(
            f"{src}: [storage] batch_messages ({cfg.storage.batch_messages}) must be below "
            f"[mqtt] receive_maximum ({cfg.mqtt.receive_maximum}), or batches never fill")
    for pair in cfg.pipeline.differences:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"{src}: [pipeline] differences: each entry is two different "
                              f"sensor names, got {list(pair)!r}")
    for w in cfg.pipeline.windows_s:
        if w < cfg.pipeline.cadence_s:
            raise ConfigError(f"{src}: [pipeline] windows_s: window {w} is shorter than "
                              f"cadence_s ({cfg.pipeline.cadence_s})")
    if 0 < cfg.pipeline.idle_gap_s < cfg.pipeline.cadence_s:
        # a fresh start would open the very cell the silence closed: one tick made twice
        raise ConfigError(f"{src}: [pipeline] idle_gap_s ({cfg.pipeline.idle_gap_s:g}) must "
                          f"be 0 (never) or at least cadence_s ({cfg.pipeline.cadence_s:g})")
    _check_storage(cfg)
    d = cfg.drift
    if not 10 <= d.window_s / d.sample_s <= 2000:
        raise ConfigError(f"{src}: [drift] window_s must hold 10 to 2000 samples of sample_s, "
                          f"got {d.window_s / d.sample_s:g}")
    if d.persist_s > d.window_s or d.uncalibrated_persist_s > d.window_s:
        raise ConfigError(f"{src}: [drift] persist_s and uncalibrated_persist_s must not "
                          f"exceed window_s ({d.window_s:g})")
    for name, sensor in cfg.pipeline.sensors:
        if not sensor.valid_min < sensor.valid_max:
            raise ConfigError(f"{src}: [pipeline.sensors.{name}] valid_min must be < "
                              f"valid_max, got {sensor.valid_min} and {sensor.valid_max}")
    for name, v in cfg.variants:
        cadence = v.cadence_s if v.cadence_s is not None else cfg.pipeline.cadence_s
        windows = v.windows_s if v.windows_s is not None else cfg.pipeline.windows_s
        for w in windows:
            if w < cadence:
                raise ConfigError(f"{src}: [variants.{name}] windows_s: window {w} is "
                                  f"shorter than cadence_s ({cadence})")


#: The longest live-score window (``models/scores.py``), in days: predictions are
#: kept whole at least this long.
LIVE_SCORE_DAYS = 30.0
#: Warm-up a retraining candidate reads before its history (the longest window fills).
RETRAIN_WARMUP_DAYS = 1.0


def _check_storage(cfg: Config) -> None:
    src, s, r = cfg.source, cfg.storage, cfg.retrain
    need = r.history_days + r.holdout_days + RETRAIN_WARMUP_DAYS
    if r.enabled and s.keep_readings_days and s.keep_readings_days < need:
        raise ConfigError(
            f"{src}: [storage] keep_readings_days ({s.keep_readings_days:g}) is shorter than "
            f"what the retraining loop trains on: [retrain] history_days + holdout_days + "
            f"a day of warm-up = {need:g}; raise it, set 0 (no age limit), or turn the loop "
            f"off ([retrain] enabled = false)")
    if s.keep_readings_days and s.min_keep_readings_days >= s.keep_readings_days:
        raise ConfigError(f"{src}: [storage] min_keep_readings_days "
                          f"({s.min_keep_readings_days:g}) must be below keep_readings_days "
                          f"({s.keep_readings_days:g})")
    whole = max(LIVE_SCORE_DAYS, r.shadow_days, r.drift_shadow_days, r.probation_days)
    if s.thin_predictions_after_days < whole:
        raise ConfigError(
            f"{src}: [storage] thin_predictions_after_days ({s.thin_predictions_after_days:g})"
            f" must be at least {whole:g}: the live scores (30 days) and the shadow and "
            f"probation reviews ([retrain]) read whole predictions that far back")
    if s.keep_predictions_days and s.keep_predictions_days < whole:
        raise ConfigError(
            f"{src}: [storage] keep_predictions_days ({s.keep_predictions_days:g}) must be 0 "
            f"(no age limit) or at least {whole:g}: the live scores and the shadow and "
            f"probation reviews read predictions that far back")
    if s.max_disk_mb and s.max_disk_mb < 64:
        raise ConfigError(f"{src}: [storage] max_disk_mb: expected 0 (half the file system) "
                          f"or at least 64, got {s.max_disk_mb}")
