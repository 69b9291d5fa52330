"""Snapshots from what sources deliver: a JSON array of numbers, or one CSV cell of samples.

A ``command`` or ``mqtt`` source may deliver ``{"accel": [0.01, -0.02, ...]}``; the source
picks the key and hands the value to :func:`snapshot_from_json`. A CSV logger may put a
whole capture into one cell, samples separated by ``;``: :func:`snapshot_from_csv_field`.
Both refuse anything that is not a flat list of numbers, or longer than ``max_samples``,
with :class:`fedge.errors.SensorError` (the length is checked before any element is
converted). NaN and infinity pass through on purpose: :func:`fedge.features.vibration_features`
refuses them as a dead sensor, naming how many samples are bad.
"""

from __future__ import annotations

import re

import numpy as np

from fedge.errors import ConfigError, SensorError, SensorFault
from fedge.features.vibration import DEFAULT_MAX_SAMPLES

__all__ = ["snapshot_from_csv_field", "snapshot_from_json"]

# Exactly the types json.loads produces for numbers; bool is a subclass of int but a
# true/false in a capture is a broken producer, not a sample.
_NUMBER_TYPES = (int, float)
# Characters a decimal number, nan or inf(inity) can be made of. Anything else (letters,
# "_", which float() would accept as a digit separator, non-ASCII digits) is refused
# before numpy parses the fields; numpy then refuses a malformed arrangement ("1e", "--1").
_NUMBER_CHARS = re.compile(r"[0-9eE.+\-nNaAiIfFtTyY \t]*", re.ASCII)
# No real sample needs more characters; bounds the work a hostile cell can cause.
_MAX_FIELD_CHARS = 64


def _check_max(max_samples: int) -> None:
    if max_samples < 1:
        raise ConfigError(f"max_samples must be at least 1, got {max_samples}")


def snapshot_from_json(value: object, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> np.ndarray:
    """A float64 snapshot from a decoded JSON array of numbers (ints or floats).

    Refuses (``SensorError``) a non-list, an empty list, more than ``max_samples`` items,
    and any item that is not an int or float: bools, strings, ``null``, nested lists or
    objects; ``bad_samples`` counts the offending items and the detail names the first.
    """
    _check_max(max_samples)
    if not isinstance(value, list):
        raise SensorError(
            SensorFault.NOT_NUMERIC, f"expected a JSON array of numbers, got {type(value).__name__}"
        )
    n = len(value)
    if n == 0:
        raise SensorError(SensorFault.TOO_FEW_SAMPLES, "empty array: no samples")
    if n > max_samples:
        raise SensorError(
            SensorFault.TOO_MANY_SAMPLES, f"{n} samples, at most {max_samples} allowed"
        )
    # type() rather than isinstance(): exact types, so True/False do not pass as 1/0.
    if not set(map(type, value)) <= set(_NUMBER_TYPES):
        bad = [i for i, v in enumerate(value) if type(v) not in _NUMBER_TYPES]
        first = value[bad[0]]
        raise SensorError(
            SensorFault.NOT_NUMERIC,
            f"{len(bad)} of {n} items are not numbers; item {bad[0]} is "
            f"{type(first).__name__} {_preview(first)}",
            bad_samples=len(bad),
        )
    try:
        return np.array(value, dtype=np.float64)
    except OverflowError as exc:  # an int beyond float64 range (~1.8e308)
        raise SensorError(
            SensorFault.OUT_OF_RANGE, f"a sample does not fit a float: {exc}"
        ) from exc


def snapshot_from_csv_field(
    text: str, *, sep: str = ";", max_samples: int = DEFAULT_MAX_SAMPLES
) -> np.ndarray:
    """A float64 snapshot from one CSV cell holding samples separated by ``sep``.

    Fields are decimal numbers (``-1.5``, ``2e-3``, ``.5``; ``nan``/``inf`` are let
    through, see the module doc), optionally padded with spaces or tabs. Refuses
    (``SensorError``) an empty cell, an empty field (``"1;;2"``, a trailing ``sep``), any
    other text in a field, and more than ``max_samples`` fields. ``sep`` may not be a
    character that numbers are made of (``ConfigError``).
    """
    _check_max(max_samples)
    if not sep or _NUMBER_CHARS.fullmatch(sep):
        raise ConfigError(f"separator {sep!r} is empty or can be part of a number")
    if not isinstance(text, str):
        raise SensorError(SensorFault.NOT_NUMERIC, f"expected text, got {type(text).__name__}")
    if not text.strip():
        raise SensorError(SensorFault.TOO_FEW_SAMPLES, "empty field: no samples")
    n = text.count(sep) + 1
    if n > max_samples:
        raise SensorError(
            SensorFault.TOO_MANY_SAMPLES, f"{n} samples, at most {max_samples} allowed"
        )
    if len(text) > n * (_MAX_FIELD_CHARS + len(sep)):
        raise SensorError(
            SensorFault.NOT_NUMERIC,
            f"{len(text)} characters for {n} samples: fields longer than "
            f"{_MAX_FIELD_CHARS} characters are not numbers",
        )
    fields = text.split(sep)
    if _NUMBER_CHARS.fullmatch(text.replace(sep, "")):
        try:
            return np.array(fields, dtype=np.float64)
        except ValueError:
            pass  # locate the culprit below for a useful message
    bad = [i for i, f in enumerate(fields) if not _is_number(f)]
    first = bad[0] if bad else 0
    raise SensorError(
        SensorFault.NOT_NUMERIC,
        f"{len(bad)} of {n} fields are not numbers; field {first} is {_preview(fields[first])}",
        bad_samples=len(bad),
    )


def _is_number(field: str) -> bool:
    if not field.strip() or not _NUMBER_CHARS.fullmatch(field):
        return False
    try:
        float(field)
    except ValueError:
        return False
    return True


def _preview(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 40 else text[:37] + "..."
