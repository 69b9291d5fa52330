"""Vibration features: one accelerometer snapshot in, one reading's worth of named floats out.

An accelerometer delivers snapshots of thousands of samples; the fleet's model reads one
value per named channel per reading. :func:`vibration_features` condenses a snapshot into
``{prefix}_rms``, ``{prefix}_peak``, ``{prefix}_crest``, ``{prefix}_kurtosis``, one
``{prefix}_band_<lo>_<hi>_hz`` per configured band and ``{prefix}_velocity_rms_mm_s``
(in that order, see :func:`feature_names`), ready to join the machine's other channels
in a :class:`fedge.messages.Reading`.

Definitions (``x`` the snapshot of ``N`` samples in ``config.units``, ``d = x - mean(x)``):

* **The mean is removed first, for every feature.** What an accelerometer reports at
  0 Hz is not vibration: DC-coupled MEMS sensors read gravity (1 g on a vertical axis,
  less when tilted) plus a bias that drifts with temperature. Left in, it would make
  RMS and peak depend on how the sensor is mounted, put the whole offset into any band
  that starts at 0 Hz, and the 1/f velocity integration would amplify it without bound.
  Crest factor and kurtosis are about the mean by definition.
* ``rms = sqrt(mean(d**2))`` and ``peak = max(|d|)``, in ``config.units``;
  ``crest = peak / rms`` (1 for a square wave, sqrt(2) for a sine).
* ``kurtosis = mean(d**4) / mean(d**2)**2``: Pearson's kurtosis (the fourth standardised
  moment, population form, *not* the excess): a normal distribution gives 3, a sine 1.5,
  a square wave 1; impacts from a spalled bearing push it far above 3.
* Spectrum: ``X = rfft(d)`` with no window (rectangular), so Parseval holds exactly. The
  one-sided power of bin ``k`` (frequency ``f_k = k * fs / N``) is ``P_k = c_k |X_k|^2 / N^2``
  with ``c_k = 1`` for the DC bin and, for even ``N``, the Nyquist bin, else 2; the sum of
  all ``P_k`` is ``mean(d**2) = rms**2``. A tone ``A sin(2 pi f t)`` centred on a bin has
  ``P_k = A^2 / 2``; a tone between bins leaks into its neighbours, so bands should be wide
  compared to the resolution ``fs / N`` (the config enforces at least one bin).
* Band "energy" of ``[lo, hi)`` is the **mean-square contribution** of the bins with
  ``lo <= f_k < hi``: ``sum P_k``, in ``config.units`` squared. A band whose ``hi`` is the
  Nyquist frequency also takes the Nyquist bin, so bands tiling ``[0, fs/2]`` sum to
  ``rms**2``.
* Velocity RMS (ISO 10816 style) integrates in the frequency domain over the velocity
  band (same bin rule): ``V_k = A_k / (2 pi f_k)``, so
  ``v_rms = sqrt(sum P_k / (2 pi f_k)^2)``, with g converted at 9.80665 m/s^2 and the
  result in mm/s. Only with a known sample rate.

Refusals are :class:`fedge.errors.SensorError` with a :class:`fedge.errors.SensorFault`:
a snapshot containing NaN/Inf (a dead or disconnected channel; the detail names how many
samples are bad) and a **flat line** (every sample identical) are both refused as dead
sensors rather than reported as "zero vibration": a running machine never produces a
bit-identical signal, crest factor and kurtosis are undefined for it, and an RMS of 0 fed
to the model would read as a perfectly healthy machine. The agent counts the fault
(``SensorError.dead_sensor``) and skips the reading.

Pure numpy, no I/O; one 4096-sample snapshot takes well under a millisecond
(``benchmarks/vibration.py``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from fedge.errors import SensorError, SensorFault

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_MIN_SAMPLES",
    "STANDARD_GRAVITY",
    "VibrationConfig",
    "feature_names",
    "vibration_features",
]

STANDARD_GRAVITY = 9.80665
"""m/s^2 per g (standard gravity, 3rd CGPM 1901)."""

DEFAULT_MAX_SAMPLES = 1 << 20
DEFAULT_MIN_SAMPLES = 16
# Integration multiplies by 1/(2 pi f): below 0.1 Hz an accelerometer's noise floor, not
# the machine, dominates the result (ISO 10816 starts at 10 Hz, 2 Hz for slow machines).
MIN_VELOCITY_HZ = 0.1
# A feature name must be a valid key of Reading.values (fedge.messages.SensorName).
_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

Band = tuple[float, float]


class VibrationConfig(BaseModel):
    """How one accelerometer channel is turned into features (frozen, validated).

    ``prefix`` names the channel ("bearing" gives "bearing_rms", ...). ``bands_hz`` and
    the velocity feature need ``sample_rate_hz``; without it only the four time-domain
    features are produced. ``max_abs`` (in ``units``) refuses implausible samples: no
    accelerometer measures beyond ~1e5 g, and the bound keeps every feature finite.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")]
    sample_rate_hz: Annotated[float, Field(gt=0.0, le=1e9)] | None = None
    units: Literal["g", "m/s2"] = "g"
    bands_hz: Annotated[tuple[Band, ...], Field(max_length=32)] = ()
    velocity_band_hz: Band | None = (10.0, 1000.0)
    min_samples: Annotated[int, Field(ge=4)] = DEFAULT_MIN_SAMPLES
    max_samples: Annotated[int, Field(ge=4, le=1 << 24)] = DEFAULT_MAX_SAMPLES
    max_abs: Annotated[float, Field(gt=0.0, le=1e12)] = 1e6

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples {self.min_samples} > max_samples {self.max_samples}")
        fs = self.sample_rate_hz
        if fs is None and self.bands_hz:
            raise ValueError("bands_hz need sample_rate_hz")
        for lo, hi in self.bands_hz:
            _check_band("bands_hz", lo, hi, fs=fs, min_samples=self.min_samples, min_lo=0.0)
        if self.velocity_band_hz is not None:
            lo, hi = self.velocity_band_hz
            _check_band(
                "velocity_band_hz",
                lo,
                hi,
                fs=fs,
                min_samples=self.min_samples,
                min_lo=MIN_VELOCITY_HZ,
            )
        names = feature_names(self)
        if len(set(names)) != len(names):
            raise ValueError(f"bands_hz give duplicate feature names: {names}")
        for name in names:
            if not _FEATURE_NAME.fullmatch(name):
                raise ValueError(f"feature name {name!r} is not a valid sensor name")
        return self

    @property
    def nyquist_hz(self) -> float | None:
        """Half the sample rate, or ``None`` when the rate is unknown."""
        return None if self.sample_rate_hz is None else self.sample_rate_hz / 2.0

    @property
    def has_velocity(self) -> bool:
        """Whether :func:`vibration_features` reports the velocity RMS."""
        return self.sample_rate_hz is not None and self.velocity_band_hz is not None


def _check_band(
    field: str, lo: float, hi: float, *, fs: float | None, min_samples: int, min_lo: float
) -> None:
    if not min_lo <= lo < hi:
        raise ValueError(f"{field}: band ({lo}, {hi}) needs {min_lo} <= lo < hi")
    if fs is None:
        return
    if hi > fs / 2.0:
        raise ValueError(f"{field}: band ({lo}, {hi}) goes above Nyquist {fs / 2.0} Hz")
    # A half-open interval at least one resolution wide holds at least one bin for every
    # snapshot of min_samples or more samples: no band is silently empty (always 0).
    resolution = fs / min_samples
    if hi - lo < resolution:
        raise ValueError(
            f"{field}: band ({lo}, {hi}) is narrower than the frequency resolution "
            f"fs / min_samples = {resolution} Hz; widen it or raise min_samples"
        )


def _hz(value: float) -> str:
    # 1000.0 -> "1000", 12.5 -> "12p5": names stay valid sensor names (no "." or "-").
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text.replace(".", "p")


def feature_names(config: VibrationConfig) -> tuple[str, ...]:
    """The exact names, in order, of the features :func:`vibration_features` returns."""
    p = config.prefix
    names = [f"{p}_rms", f"{p}_peak", f"{p}_crest", f"{p}_kurtosis"]
    if config.sample_rate_hz is not None:
        names += [f"{p}_band_{_hz(lo)}_{_hz(hi)}_hz" for lo, hi in config.bands_hz]
    if config.has_velocity:
        names.append(f"{p}_velocity_rms_mm_s")
    return tuple(names)


def _checked(snapshot: np.ndarray, config: VibrationConfig) -> np.ndarray:
    """The snapshot as finite float64 samples within range, or a typed refusal."""
    if not isinstance(snapshot, np.ndarray):
        raise SensorError(
            SensorFault.NOT_NUMERIC, f"expected a numpy array, got {type(snapshot).__name__}"
        )
    kind = snapshot.dtype.kind
    if kind not in "iuf":  # bool, complex, object, strings are not acceleration samples
        raise SensorError(SensorFault.NOT_NUMERIC, f"samples of dtype {snapshot.dtype}")
    if snapshot.ndim != 1:
        raise SensorError(
            SensorFault.WRONG_SHAPE, f"expected one channel (1-D), got shape {snapshot.shape}"
        )
    n = snapshot.size
    if n < config.min_samples:
        raise SensorError(
            SensorFault.TOO_FEW_SAMPLES, f"{n} samples, at least {config.min_samples} needed"
        )
    if n > config.max_samples:
        raise SensorError(
            SensorFault.TOO_MANY_SAMPLES, f"{n} samples, at most {config.max_samples} allowed"
        )
    x = snapshot.astype(np.float64, copy=False)
    bad = n - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise SensorError(
            SensorFault.NON_FINITE,
            f"{bad} of {n} samples are NaN or infinite (dead or disconnected sensor?)",
            bad_samples=bad,
        )
    magnitude = np.abs(x)
    over = int(np.count_nonzero(magnitude > config.max_abs))
    if over:
        raise SensorError(
            SensorFault.OUT_OF_RANGE,
            f"{over} of {n} samples exceed {config.max_abs} {config.units} in magnitude",
            bad_samples=over,
        )
    if x.min() == x.max():
        raise SensorError(
            SensorFault.FLAT_LINE,
            f"all {n} samples equal {float(x[0])!r}: stuck or disconnected sensor",
            bad_samples=n,
        )
    return x


def _band_slice(freqs: np.ndarray, lo: float, hi: float, nyquist: float) -> slice:
    start = int(np.searchsorted(freqs, lo, side="left"))
    # The Nyquist bin belongs to the band that ends at Nyquist (see the module docstring).
    stop = freqs.size if hi >= nyquist else int(np.searchsorted(freqs, hi, side="left"))
    return slice(start, stop)


def vibration_features(snapshot: np.ndarray, config: VibrationConfig) -> dict[str, float]:
    """Condense one accelerometer snapshot into named features (definitions: module doc).

    ``snapshot`` is a 1-D array of acceleration samples in ``config.units`` (integer or
    float dtype), of ``config.min_samples`` to ``config.max_samples`` samples. Returns
    finite floats keyed exactly by :func:`feature_names` in that order: RMS and peak in
    ``config.units``, crest factor, Pearson kurtosis (normal = 3), band mean-square
    energies in ``config.units`` squared, velocity RMS in mm/s.

    Raises :class:`fedge.errors.SensorError` (a :class:`fedge.errors.DataError`) for a
    wrong dtype or shape, too few or too many samples, NaN/Inf samples, samples beyond
    ``config.max_abs`` and a flat line.
    """
    x = _checked(snapshot, config)
    n = x.size
    # Work in units of the largest magnitude so that neither tiny signals (x**4 would
    # underflow to 0) nor large ones lose precision; scale > 0 as the line is not flat.
    scale = float(np.max(np.abs(x)))
    z = x / scale
    z -= z.mean()
    z -= z.mean()  # a second pass removes most of the first one's rounding error
    z2 = z * z
    m2 = float(z2.mean())
    if not m2 > 0.0:  # distinct float64 samples cannot get here; kept so no NaN escapes
        raise SensorError(SensorFault.FLAT_LINE, f"{n} samples with no measurable variation")
    m4 = float(np.dot(z2, z2)) / n
    peak = float(np.max(np.abs(z)))
    rms = math.sqrt(m2)
    p = config.prefix
    out = {
        f"{p}_rms": scale * rms,
        f"{p}_peak": scale * peak,
        f"{p}_crest": peak / rms,
        f"{p}_kurtosis": m4 / (m2 * m2),
    }
    fs = config.sample_rate_hz
    if fs is None or not (config.bands_hz or config.has_velocity):
        return out

    spectrum = np.fft.rfft(z)
    power = spectrum.real**2 + spectrum.imag**2
    power *= 2.0 / (n * n)
    power[0] *= 0.5
    if n % 2 == 0:
        power[-1] *= 0.5  # the Nyquist bin has no mirror image either
    power *= scale * scale  # back to config.units squared
    freqs = np.arange(power.size) * fs / n
    nyquist = fs / 2.0
    band_names = feature_names(config)[4 : 4 + len(config.bands_hz)]
    for (lo, hi), name in zip(config.bands_hz, band_names, strict=True):
        out[name] = float(power[_band_slice(freqs, lo, hi, nyquist)].sum())
    if config.velocity_band_hz is not None:
        band = _band_slice(freqs, *config.velocity_band_hz, nyquist)
        omega = 2.0 * math.pi * freqs[band]
        v_ms = math.sqrt(float(np.sum(power[band] / (omega * omega))))
        to_si = STANDARD_GRAVITY if config.units == "g" else 1.0
        out[f"{p}_velocity_rms_mm_s"] = v_ms * to_si * 1000.0
    return out
