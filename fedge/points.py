"""Time-series points: the storage schema and an exact InfluxDB line-protocol encoder (pure).

Every message the aggregator ingests becomes one or more :class:`Point`. The same
points go to InfluxDB (line protocol) and to the zero-setup SQLite sink, so the
schema below is the one contract between ingestion and the Grafana dashboards.

Schema
------

Measurements (tags marked * are present only when the message carries them):

=================  ======================================  ====================================
measurement        tags                                    point time
=================  ======================================  ====================================
``telemetry``      ``fleet``, ``device``, ``site``*,       the reading's device ``ts`` (one
                   ``unit``*                               point per reading)
``prediction``     ``fleet``, ``device``                   the prediction's ``ts``
``device_health``  ``fleet``, ``device``, ``site``*        last seen: status ``ts`` (online) or
                                                           the ingest clock (offline, no ts)
``fl_round``       ``fleet``, ``task``, ``outcome``        the round summary's ``ts``
``alert``          ``fleet``, ``device``, ``kind``         the prediction's ``ts``
``event``          ``fleet``, ``device``, ``kind``         the maintenance event's ``ts``
=================  ======================================  ====================================

Fields (types never change within a measurement; * = only when known):

=================  ===========================  ======  ==========================================
measurement        field                        type    meaning
=================  ===========================  ======  ==========================================
``telemetry``      ``<sensor>``                 float   one field per sensor in the reading
``telemetry``      ``seq``                      int     per-device sequence number
``telemetry``      ``cycle``*                   int     operating cycle of the machine
``prediction``     ``rul``                      float   predicted remaining useful life (cycles)
``prediction``     ``failure_probability``      float   probability of failure within horizon
``prediction``     ``model_version``            int     global model version used
``prediction``     ``horizon``                  int     horizon of the probability (cycles)
``prediction``     ``alert``                    bool    the agent raised an alert
``prediction``     ``unit``*                    int     machine unit the window came from
``prediction``     ``cycle``*                   int     cycle of the window's last reading
``prediction``     ``health``*                  float   health score of the current life (0-1)
``prediction``     ``anomaly``*                 bool    the health monitor's alert is active
``device_health``  ``online``                   int     1 online, 0 offline
``device_health``  ``buffer_depth``*            int     readings waiting in the agent's buffer
``device_health``  ``buffer_unconfirmed``*      int     acknowledged by the broker, not yet stored
``device_health``  ``cpu_percent``*             float   agent CPU use
``device_health``  ``memory_mb``*               float   agent memory use
``device_health``  ``model_version``*           int     model version on the device
``device_health``  ``agent_version``*           string  agent software version
``device_health``  ``refused_model_version``*   int     newest global model the device refused
``device_health``  ``refused_reason``*          string  why (a RefusalReason value)
``fl_round``       ``round_id``                 int     round number
``fl_round``       ``version``                  int     global model version after the round
``fl_round``       ``participants``             int     accepted updates
``fl_round``       ``rejected``                 int     rejected updates
``fl_round``       ``rejected_<reason>``        int     rejected updates per reason
``fl_round``       ``num_examples``             int     training examples behind the updates
``fl_round``       ``val_examples``             int     validation examples
``fl_round``       ``bytes_received``           int     update bytes received
``fl_round``       ``duration_s``               float   wall time of the round
``fl_round``       ``train_loss``*              float   weighted mean training loss
``fl_round``       ``val_error``*               float   validation error (RMSE)
``alert``          ``rul``                      float   as in ``prediction``
``alert``          ``failure_probability``      float   as in ``prediction``
``alert``          ``message``                  string  human-readable summary
``alert``          ``health``*                  float   as in ``prediction`` (anomaly alerts)
``event``          ``note``                     string  what the person (or simulator) wrote
``event``          ``event_id``                 string  the event's id (idempotent re-delivery)
``event``          ``source``                   string  ``cli``, ``operator`` or ``simulator``
=================  ===========================  ======  ==========================================

Rules that keep InfluxDB happy:

* A field keeps one type in every point of its measurement (InfluxDB refuses a
  write that changes a field's type within a shard): sensor values and other
  float fields are always written as floats, counters always as ``i`` integers.
* Sensors may not be named like a tag or an int field of ``telemetry`` (``seq``,
  ``cycle``, ``fleet``, ``device``, ``site``, ``unit``, ``time``): such a batch is
  refused with :class:`~fedge.errors.MessageError` instead of silently mixing types.
* ``online`` is an integer, not a boolean, so dashboards can ``sum()`` and ``mean()`` it.
* ``device_health`` time is the status's own ``ts`` for ``online`` messages and
  the ingest clock (``received_at``) for ``offline`` ones: an offline status is
  usually the broker publishing the last will, whose ``ts`` was fixed when the
  device connected.
* An ``alert`` point (``kind="failure_predicted"``) is emitted next to each
  prediction that has ``alert=True``, and one with ``kind="anomaly"`` (its message
  names the features that moved) next to each prediction with ``anomaly=True``.
* ``health`` and ``anomaly`` are written for predictions of a device whose health
  monitor has a score (``health`` known) or an active anomaly alert, else left out.
* An ``event`` point (a maintenance event, tag ``kind`` = ``failure``, ``repair`` or
  ``replace``) is stamped with the event's own time, so a redelivered event is the
  same point again (InfluxDB overwrites it; the SQLite sink merges it).
* Times are integer nanoseconds, rounded to the microsecond (a float of Unix
  seconds carries no more precision than that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import overload

from pydantic_core import to_json

from fedge.errors import MessageError, SinkError
from fedge.lives import MaintenanceEvent
from fedge.messages import DeviceStatus, Prediction, RoundSummary, TelemetryBatch

__all__ = [
    "MEASUREMENTS",
    "RESERVED_SENSOR_NAMES",
    "FieldValue",
    "Point",
    "PointBatch",
    "event_points",
    "health_points",
    "line_bytes",
    "lines",
    "prediction_points",
    "round_points",
    "seconds_to_ns",
    "telemetry_lines",
    "telemetry_points",
]

FieldValue = bool | int | float | str

MEASUREMENTS = ("telemetry", "prediction", "device_health", "fl_round", "alert", "event")
"""Every measurement fedge writes."""

RESERVED_SENSOR_NAMES = frozenset({"seq", "cycle", "fleet", "device", "site", "unit", "time"})
"""Sensor names that would collide with a tag or a typed field of ``telemetry``."""

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# Line protocol has no way to carry a raw newline, so control characters are written as
# a visible backslash sequence: the line stays one line, the value stays readable.
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_ESCAPE_KEY = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"}
)
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\", "\n": r"\n", "\r": r"\r"})


def seconds_to_ns(ts: float) -> int:
    """Unix seconds (float) to integer nanoseconds, rounded to the microsecond."""
    return round(ts * 1_000_000) * 1000


def _format_field(key: str, value: FieldValue) -> str:
    # bool first: bool is a subclass of int in Python.
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = f"{value}i"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = f'"{value.translate(_ESCAPE_STRING)}"'
    return f"{key.translate(_ESCAPE_KEY)}={text}"


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point. ``tags`` and ``fields`` are ordered ``(key, value)`` tuples.

    Build points with :meth:`Point.of`, which sorts tags (InfluxDB's preferred order),
    drops empty/None values and validates everything :meth:`to_line` relies on.
    """

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int

    def __post_init__(self) -> None:
        if not self.measurement or self.measurement.startswith("#"):
            raise SinkError(f"invalid measurement name {self.measurement!r}")
        if not self.fields:
            raise SinkError(f"point in {self.measurement!r} has no fields")
        for key, tag in self.tags:
            if not key or not tag:
                raise SinkError(f"empty tag key or value in {self.measurement!r}: {key!r}")
            # A trailing backslash would escape the separator that follows it.
            if key.endswith("\\") or tag.endswith("\\"):
                raise SinkError(f"tag {key!r} in {self.measurement!r} ends with a backslash")
        for key, value in self.fields:
            if not key or key == "time" or key.endswith("\\"):
                raise SinkError(f"invalid field key {key!r} in {self.measurement!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise SinkError(f"non-finite field {key}={value} in {self.measurement!r}")
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and not _INT64_MIN <= value <= _INT64_MAX
            ):
                raise SinkError(f"field {key}={value} does not fit in int64")
            if not isinstance(value, bool | int | float | str):
                raise SinkError(f"unsupported field type {type(value).__name__} for {key!r}")
        if isinstance(self.time_ns, bool) or not isinstance(self.time_ns, int):
            raise SinkError(f"point time must be integer nanoseconds, got {self.time_ns!r}")

    @classmethod
    def of(
        cls,
        measurement: str,
        tags: Mapping[str, str | None],
        fields: Mapping[str, FieldValue | None],
        time_ns: int,
    ) -> Point:
        """Build a point; tags are sorted by key, ``None`` tags/fields and empty tags dropped."""
        return cls(
            measurement,
            tuple(sorted((k, v) for k, v in tags.items() if v)),
            tuple((k, v) for k, v in fields.items() if v is not None),
            time_ns,
        )

    @property
    def tag_dict(self) -> dict[str, str]:
        """Tags as a dict."""
        return dict(self.tags)

    @property
    def field_dict(self) -> dict[str, FieldValue]:
        """Fields as a dict."""
        return dict(self.fields)

    def to_line(self) -> str:
        """The point as one line of InfluxDB line protocol (nanosecond precision, no newline)."""
        head = self.measurement.translate(_ESCAPE_MEASUREMENT)
        for key, value in self.tags:
            head += f",{key.translate(_ESCAPE_KEY)}={value.translate(_ESCAPE_KEY)}"
        body = ",".join(_format_field(k, v) for k, v in self.fields)
        return f"{head} {body} {self.time_ns}"


def lines(points: Iterable[Point]) -> str:
    """Line protocol for several points, newline-separated (no trailing newline)."""
    return "\n".join(p.to_line() for p in points)


class PointBatch(Sequence[Point]):
    """An immutable sequence of points that also carries their line protocol.

    The ingestion hot path formats telemetry straight from the wire message
    (:func:`telemetry_lines`) instead of building a :class:`Point` per reading:
    sinks that speak line protocol take :attr:`lines`; every other consumer sees
    an ordinary ``Sequence[Point]`` whose points are built on first use (once).
    ``lines[i]`` is always ``self[i].to_line().encode()``.
    """

    __slots__ = ("_len", "_lines", "_make_points", "_parts", "_points")

    def __init__(
        self,
        *,
        points: Sequence[Point] | None = None,
        lines: list[bytes] | None = None,
        make_points: Callable[[], Sequence[Point]] | None = None,
    ) -> None:
        if points is None and make_points is None:
            raise ValueError("PointBatch needs points or a way to make them")
        if lines is None and points is None:
            raise ValueError("PointBatch needs its lines when its points are made lazily")
        self._points = None if points is None else list(points)
        self._lines = lines
        self._make_points = make_points
        self._parts: tuple[PointBatch, ...] = ()
        self._len = len(lines) if lines is not None else len(self._points or ())

    @classmethod
    def concat(cls, parts: Iterable[Sequence[Point]]) -> PointBatch:
        """Every part in order (PointBatch or plain sequences); nothing is formatted or
        built until :attr:`lines` or the points are asked for."""
        batches = tuple(p if isinstance(p, PointBatch) else cls(points=p) for p in parts)
        if len(batches) == 1:
            return batches[0]
        out = cls(points=())
        out._points = None
        out._parts = batches
        out._len = sum(b._len for b in batches)
        return out

    @property
    def points(self) -> list[Point]:
        """The points (built now if they were not yet)."""
        if self._points is None:
            if self._parts:
                self._points = [p for part in self._parts for p in part.points]
            elif self._make_points is not None:
                self._points = list(self._make_points())
                self._make_points = None
            else:  # unreachable: __init__ requires points or make_points
                raise RuntimeError("PointBatch has neither points nor a way to make them")
        return self._points

    @property
    def lines(self) -> list[bytes]:
        """Line protocol of every point, UTF-8, without newlines (formatted once)."""
        if self._lines is None:
            if self._parts:
                self._lines = list(chain.from_iterable(part.lines for part in self._parts))
            else:
                self._lines = [p.to_line().encode() for p in self.points]
        return self._lines

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Point: ...

    @overload
    def __getitem__(self, index: slice) -> list[Point]: ...

    def __getitem__(self, index: int | slice) -> Point | list[Point]:
        return self.points[index]

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def __repr__(self) -> str:
        return f"PointBatch({len(self)} points)"


def line_bytes(points: Sequence[Point]) -> list[bytes]:
    """UTF-8 line protocol of each point (precomputed ones of a :class:`PointBatch` reused)."""
    if isinstance(points, PointBatch):
        return points.lines
    return [p.to_line().encode() for p in points]


def telemetry_points(batch: TelemetryBatch) -> list[Point]:
    """One ``telemetry`` point per reading. Raises MessageError on a reserved sensor name."""
    tags: dict[str, str | None] = {
        "fleet": batch.fleet,
        "device": batch.device,
        "site": batch.site,
        "unit": None if batch.unit is None else str(batch.unit),
    }
    points = []
    for reading in batch.readings:
        clash = RESERVED_SENSOR_NAMES.intersection(reading.values)
        if clash:
            raise MessageError(
                f"sensor name(s) {sorted(clash)} of device {batch.device!r} are reserved"
            )
        fields: dict[str, FieldValue | None] = {
            name: float(value) for name, value in reading.values.items()
        }
        fields["seq"] = int(reading.seq)
        fields["cycle"] = None if reading.cycle is None else int(reading.cycle)
        points.append(Point.of("telemetry", tags, fields, seconds_to_ns(reading.ts)))
    return points


# Sensor-name tuple -> the field part of a bytes %-format template (b"k1=%s,k2=%s,"), or
# None when the names need the exact (slow) path because they would be refused. Bounded.
_FIELDS_CACHE: dict[tuple[str, ...], bytes | None] = {}
_FIELDS_CACHE_MAX = 4096


def _fields_template(names: tuple[str, ...]) -> bytes | None:
    try:
        return _FIELDS_CACHE[names]
    except KeyError:
        pass
    result: bytes | None
    if RESERVED_SENSOR_NAMES.intersection(names) or any(
        not isinstance(k, str) or not k or k.endswith("\\") for k in names
    ):
        result = None
    else:
        result = b"".join(_template_text(k.translate(_ESCAPE_KEY)) + b"=%s," for k in names)
    if len(_FIELDS_CACHE) >= _FIELDS_CACHE_MAX:
        _FIELDS_CACHE.clear()
    _FIELDS_CACHE[names] = result
    return result


def _template_text(text: str) -> bytes:
    return text.encode().replace(b"%", b"%%")


def _float_texts(values: list[float]) -> list[bytes]:
    """``repr(v).encode()`` of every (finite) float, formatted in one call.

    pydantic-core's JSON serializer writes floats with Ryu: the shortest digits that
    round-trip, like ``repr`` (same digits, same ``.0`` for integral values, same
    fixed notation up to 1e16), at a fifth of its cost. They differ only in the
    exponent form (Ryu ``1e-7``/``1e16``, repr ``1e-07``/``1e+16``) and for
    ``1e-5 <= |v| < 1e-4`` (Ryu ``0.00001``, repr ``1e-05``), so any text with an
    ``e`` or ``0.0000`` is taken from ``repr`` instead. Either text parses to the
    same float.
    """
    if not values:
        return []
    text = to_json(values)
    texts = text[1:-1].split(b",")
    if b"e" in text or b"0.0000" in text:
        texts = [
            t if b"e" not in t and b"0.0000" not in t else repr(v).encode()
            for t, v in zip(texts, values, strict=True)
        ]
    return texts


def telemetry_lines(batch: TelemetryBatch) -> list[bytes]:
    """``[p.to_line().encode() for p in telemetry_points(batch)]``, without the Point objects.

    The ingestion hot path: one bytes %-format template per distinct sensor set holds
    the escaped tag set and field keys, every float of the batch is formatted in one
    call (:func:`_float_texts`), and each reading costs one format. Any reading that
    :func:`telemetry_points` would refuse (reserved or invalid sensor name, non-finite
    value, integer outside int64) sends the whole batch through
    :func:`telemetry_points`, so errors are raised exactly as it raises them.
    """
    tags = sorted(
        (k, v)
        for k, v in (
            ("fleet", batch.fleet),
            ("device", batch.device),
            ("site", batch.site),
            ("unit", None if batch.unit is None else str(batch.unit)),
        )
        if v
    )
    if any(not isinstance(v, str) or v.endswith("\\") for _, v in tags):
        return _slow_telemetry_lines(batch)
    head = "telemetry" + "".join(
        f",{k.translate(_ESCAPE_KEY)}={v.translate(_ESCAPE_KEY)}" for k, v in tags
    )
    head_template = _template_text(head) + b" "
    templates: dict[tuple[tuple[str, ...], bool], bytes] = {}
    floats: list[float] = []
    extend = floats.extend
    rows: list[tuple[bytes, int, int | None, int, int]] = []
    append_row = rows.append
    for reading in batch.readings:
        values = reading.values
        cycle = reading.cycle
        key = (tuple(values), cycle is not None)
        template = templates.get(key)
        if template is None:
            fields = _fields_template(key[0])
            if fields is None:
                return _slow_telemetry_lines(batch)
            template = head_template + fields
            template += b"seq=%di,cycle=%di %d" if key[1] else b"seq=%di %d"
            templates[key] = template
        seq = int(reading.seq)
        if cycle is not None:
            cycle = int(cycle)
            if not _INT64_MIN <= cycle <= _INT64_MAX:
                return _slow_telemetry_lines(batch)
        if not _INT64_MIN <= seq <= _INT64_MAX:
            return _slow_telemetry_lines(batch)
        extend(map(float, values.values()))
        append_row((template, seq, cycle, round(reading.ts * 1_000_000) * 1000, len(values)))
    # A sum of finite floats is finite unless it overflows: then the exact path decides.
    if not math.isfinite(sum(floats)):
        return _slow_telemetry_lines(batch)
    texts = _float_texts(floats)
    out: list[bytes] = []
    append = out.append
    start = 0
    for template, seq, cycle, time_ns, count in rows:
        end = start + count
        if cycle is None:
            append(template % (*texts[start:end], seq, time_ns))
        else:
            append(template % (*texts[start:end], seq, cycle, time_ns))
        start = end
    return out


def _slow_telemetry_lines(batch: TelemetryBatch) -> list[bytes]:
    return [p.to_line().encode() for p in telemetry_points(batch)]


def _alert_message(pred: Prediction) -> str:
    return (
        f"{pred.device}: predicted RUL {pred.rul:.1f} cycles, failure probability "
        f"{pred.failure_probability:.0%} within {pred.horizon} cycles (model v{pred.model_version})"
    )


def prediction_points(pred: Prediction) -> list[Point]:
    """A ``prediction`` point, plus an ``alert`` point per active alert (RUL, anomaly)."""
    time_ns = seconds_to_ns(pred.ts)
    tags: dict[str, str | None] = {"fleet": pred.fleet, "device": pred.device}
    monitored = pred.health is not None or pred.anomaly
    health = None if pred.health is None else float(pred.health)
    points = [
        Point.of(
            "prediction",
            tags,
            {
                "rul": float(pred.rul),
                "failure_probability": float(pred.failure_probability),
                "model_version": int(pred.model_version),
                "horizon": int(pred.horizon),
                "alert": bool(pred.alert),
                # None fields are omitted by Point.of; both are ints whenever present.
                "unit": None if pred.unit is None else int(pred.unit),
                "cycle": None if pred.cycle is None else int(pred.cycle),
                "health": health,
                "anomaly": bool(pred.anomaly) if monitored else None,
            },
            time_ns,
        )
    ]
    if pred.alert:
        points.append(
            Point.of(
                "alert",
                {**tags, "kind": "failure_predicted"},
                {
                    "rul": float(pred.rul),
                    "failure_probability": float(pred.failure_probability),
                    "message": _alert_message(pred),
                },
                time_ns,
            )
        )
    if pred.anomaly:
        reason = pred.anomaly_reason or "health score above its threshold"
        points.append(
            Point.of(
                "alert",
                {**tags, "kind": "anomaly"},
                {
                    "rul": float(pred.rul),
                    "failure_probability": float(pred.failure_probability),
                    "health": health,
                    "message": f"{pred.device}: anomaly: {reason}",
                },
                time_ns,
            )
        )
    return points


def event_points(event: MaintenanceEvent) -> list[Point]:
    """One ``event`` point per maintenance event, at the event's own time."""
    return [
        Point.of(
            "event",
            {"fleet": event.fleet, "device": event.device, "kind": event.kind},
            {"note": event.note, "event_id": event.event_id, "source": event.source},
            seconds_to_ns(event.ts),
        )
    ]


def health_points(status: DeviceStatus, *, received_at: float) -> list[Point]:
    """One ``device_health`` point; see the module docs for which clock stamps it."""
    online = status.state == "online"
    ts = status.ts if (online and status.ts is not None) else received_at

    def opt_float(value: float | None) -> float | None:
        return None if value is None else float(value)

    def opt_int(value: int | None) -> int | None:
        return None if value is None else int(value)

    return [
        Point.of(
            "device_health",
            {"fleet": status.fleet, "device": status.device, "site": status.site},
            {
                "online": 1 if online else 0,
                "buffer_depth": opt_int(status.buffer_depth),
                "buffer_unconfirmed": opt_int(status.buffer_unconfirmed),
                "cpu_percent": opt_float(status.cpu_percent),
                "memory_mb": opt_float(status.memory_mb),
                "model_version": opt_int(status.model_version),
                "agent_version": status.agent_version or None,
                "refused_model_version": opt_int(status.refused_model_version),
                "refused_reason": status.refused_reason or None,
            },
            seconds_to_ns(ts),
        )
    ]


def round_points(summary: RoundSummary) -> list[Point]:
    """One ``fl_round`` point per closed round."""
    fields: dict[str, FieldValue | None] = {
        "round_id": int(summary.round_id),
        "version": int(summary.version),
        "participants": int(summary.participants),
        "rejected": int(summary.rejected),
        "num_examples": int(summary.num_examples),
        "val_examples": int(summary.val_examples),
        "bytes_received": int(summary.bytes_received),
        "duration_s": float(summary.duration_s),
        "train_loss": None if summary.train_loss is None else float(summary.train_loss),
        "val_error": None if summary.val_error is None else float(summary.val_error),
        # Bounds and privacy (None, hence absent, when not configured).
        "clipped": None if summary.clipped is None else int(summary.clipped),
        "dp_epsilon": None if summary.dp_epsilon is None else float(summary.dp_epsilon),
        "dp_delta": None if summary.dp_delta is None else float(summary.dp_delta),
        "dp_epsilon_local": (
            None if summary.dp_epsilon_local is None else float(summary.dp_epsilon_local)
        ),
    }
    for reason, count in sorted(summary.rejected_by_reason.items()):
        fields[f"rejected_{reason}"] = int(count)
    return [
        Point.of(
            "fl_round",
            {"fleet": summary.fleet, "task": summary.task, "outcome": summary.outcome},
            fields,
            seconds_to_ns(summary.ts),
        )
    ]
