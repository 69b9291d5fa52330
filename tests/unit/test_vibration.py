"""Vibration features against analytic values, typed refusals, and invariants (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from fedge.errors import DataError, SensorError, SensorFault
from fedge.features import (
    STANDARD_GRAVITY,
    VibrationConfig,
    feature_names,
    vibration_features,
)
from fedge.messages import Reading

FS = 10_000.0
N = 4096
BANDS = ((0.0, 1000.0), (1000.0, 2500.0), (2500.0, 5000.0))


def config(**overrides: object) -> VibrationConfig:
    values: dict[str, object] = {
        "prefix": "bearing",
        "sample_rate_hz": FS,
        "bands_hz": BANDS,
        "units": "m/s2",
    }
    values.update(overrides)
    return VibrationConfig.model_validate(values)


def tone(amplitude: float, k: int, n: int = N) -> np.ndarray:
    """``amplitude * sin(2 pi f t)`` at the bin-centred frequency ``f = k * fs / n``."""
    return amplitude * np.sin(2.0 * np.pi * k * np.arange(n) / n)


# --- time-domain features -----------------------------------------------------------


def test_sine_rms_peak_crest_kurtosis() -> None:
    # k = 64 cycles in 4096 samples: 64 samples per period, so the peak is sampled exactly
    # and sin^2, sin^4 average to their continuous values 1/2 and 3/8 (kurtosis 3/8/(1/4)).
    a = 2.5
    f = vibration_features(tone(a, 64), config())
    assert f["bearing_rms"] == pytest.approx(a / math.sqrt(2), rel=1e-12)
    assert f["bearing_peak"] == pytest.approx(a, rel=1e-12)
    assert f["bearing_crest"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert f["bearing_kurtosis"] == pytest.approx(1.5, rel=1e-12)


def test_dc_offset_is_removed_from_every_feature() -> None:
    # A DC-coupled sensor on a vertical axis adds 1 g of gravity: not vibration.
    a = 0.7
    plain = vibration_features(tone(a, 64), config(units="g"))
    offset = vibration_features(tone(a, 64) + 1.0, config(units="g"))
    assert offset == pytest.approx(plain, rel=1e-9, abs=1e-12)
    assert offset["bearing_band_0_1000_hz"] == pytest.approx(a * a / 2, rel=1e-9)


def test_square_wave_crest_and_kurtosis_are_one() -> None:
    a = 3.0
    half_period = 32
    x = np.where((np.arange(N) // half_period) % 2 == 0, a, -a)
    f = vibration_features(x, config())
    assert f["bearing_rms"] == pytest.approx(a, rel=1e-12)
    assert f["bearing_peak"] == pytest.approx(a, rel=1e-12)
    assert f["bearing_crest"] == pytest.approx(1.0, rel=1e-12)
    assert f["bearing_kurtosis"] == pytest.approx(1.0, rel=1e-12)


def test_single_impulse_kurtosis_derived_by_hand() -> None:
    # N samples, one of height h, the rest 0. Mean h/N, so the deviations are
    # h(N-1)/N once and -h/N (N-1) times:
    #   m2 = [h^2 (N-1)^2 / N^2 + (N-1) h^2 / N^2] / N = h^2 (N-1) / N^2
    #   m4 = [h^4 (N-1)^4 / N^4 + (N-1) h^4 / N^4] / N = h^4 (N-1) ((N-1)^3 + 1) / N^5
    #   kurtosis = m4 / m2^2 = ((N-1)^3 + 1) / (N (N-1)) = (N^2 - 3N + 3) / (N-1)
    #            = N - 2 + 1/(N-1)
    # rms = h sqrt(N-1) / N, peak = h (N-1) / N, crest = sqrt(N-1).
    n, h = 1000, 5.0
    x = np.zeros(n)
    x[123] = h
    f = vibration_features(x, config(sample_rate_hz=None, bands_hz=()))
    assert f["bearing_kurtosis"] == pytest.approx(n - 2 + 1 / (n - 1), rel=1e-12)
    assert f["bearing_rms"] == pytest.approx(h * math.sqrt(n - 1) / n, rel=1e-12)
    assert f["bearing_peak"] == pytest.approx(h * (n - 1) / n, rel=1e-12)
    assert f["bearing_crest"] == pytest.approx(math.sqrt(n - 1), rel=1e-12)


def test_gaussian_noise_kurtosis_is_pearson_three() -> None:
    x = np.random.default_rng(7).normal(0.0, 0.2, size=1 << 16)
    f = vibration_features(x, config())
    # Standard error of the sample kurtosis is sqrt(24/N) ~ 0.019.
    assert f["bearing_kurtosis"] == pytest.approx(3.0, abs=0.1)


def test_tiny_signals_keep_their_moments() -> None:
    # (1e-100)^4 underflows to 0 in float64; the features are computed in units of the
    # largest sample, so kurtosis and crest do not depend on the signal's scale.
    a = 1e-100
    f = vibration_features(tone(a, 64), config())
    assert f["bearing_rms"] == pytest.approx(a / math.sqrt(2), rel=1e-12)
    assert f["bearing_kurtosis"] == pytest.approx(1.5, rel=1e-12)
    assert f["bearing_band_0_1000_hz"] == pytest.approx(a * a / 2, rel=1e-10)


def test_integer_adc_counts_are_accepted() -> None:
    counts = np.round(tone(1000.0, 64)).astype(np.int16)
    assert vibration_features(counts, config()) == vibration_features(
        counts.astype(np.float64), config()
    )


def test_power_of_two_scaling_scales_rms_exactly() -> None:
    x = np.random.default_rng(3).normal(size=N)
    base = vibration_features(x, config())
    scaled = vibration_features(x * 8.0, config())
    assert scaled["bearing_rms"] == 8.0 * base["bearing_rms"]
    assert scaled["bearing_crest"] == base["bearing_crest"]
    assert scaled["bearing_kurtosis"] == base["bearing_kurtosis"]
    assert scaled["bearing_band_0_1000_hz"] == pytest.approx(
        64.0 * base["bearing_band_0_1000_hz"], rel=1e-12
    )


def test_snapshot_is_not_modified() -> None:
    x = tone(1.0, 64) + 0.5
    before = x.copy()
    vibration_features(x, config())
    np.testing.assert_array_equal(x, before)


# --- band energies -------------------------------------------------------------------


@pytest.mark.parametrize(("k", "band"), [(64, 0), (300, 0), (600, 1), (1200, 2), (2047, 2)])
def test_tone_energy_sits_in_its_band(k: int, band: int) -> None:
    # f = k * fs / N: 156.25, 732.4, 1464.8, 2929.7, 4997.6 Hz; bin-centred, so no leakage.
    a = 1.3
    f = vibration_features(tone(a, k), config())
    energies = [f[name] for name in feature_names(config())[4:7]]
    for i, energy in enumerate(energies):
        if i == band:
            assert energy == pytest.approx(a * a / 2, rel=1e-10)
        else:
            assert energy == pytest.approx(0.0, abs=1e-20)


def test_two_tones_in_two_bands() -> None:
    x = tone(1.0, 64) + tone(0.25, 900)  # 156.25 Hz and 2197.3 Hz
    f = vibration_features(x, config())
    assert f["bearing_band_0_1000_hz"] == pytest.approx(0.5, rel=1e-10)
    assert f["bearing_band_1000_2500_hz"] == pytest.approx(0.25**2 / 2, rel=1e-10)
    assert f["bearing_band_2500_5000_hz"] == pytest.approx(0.0, abs=1e-20)


def test_band_edges_are_half_open_and_nyquist_closes_the_last_band() -> None:
    # fs = 1000 Hz, N = 1000: bins at every whole hertz, so tones can sit on the edges.
    cfg = config(
        sample_rate_hz=1000.0,
        bands_hz=((0.0, 100.0), (100.0, 500.0)),
        velocity_band_hz=(10.0, 500.0),
        units="g",
    )
    at_edge = vibration_features(tone(2.0, 100, n=1000), cfg)  # exactly 100 Hz
    assert at_edge["bearing_band_0_100_hz"] == pytest.approx(0.0, abs=1e-20)
    assert at_edge["bearing_band_100_500_hz"] == pytest.approx(2.0, rel=1e-10)
    # The Nyquist tone a*(-1)^n has mean square a^2 and belongs to the band ending at 500.
    nyquist = 0.5 * (-1.0) ** np.arange(1000)
    f = vibration_features(nyquist, cfg)
    assert f["bearing_band_100_500_hz"] == pytest.approx(0.25, rel=1e-10)
    assert f["bearing_rms"] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("n", [4096, 4095, 1000, 17])
def test_bands_tiling_the_spectrum_sum_to_mean_square(n: int) -> None:
    x = np.random.default_rng(n).normal(0.1, 1.0, size=n)
    cfg = config(bands_hz=((0.0, 1250.0), (1250.0, 3750.0), (3750.0, 5000.0)))
    f = vibration_features(x, cfg)
    total = sum(f[name] for name in feature_names(cfg)[4:7])
    assert total == pytest.approx(f["bearing_rms"] ** 2, rel=1e-12)
    assert total == pytest.approx(float(np.var(x)), rel=1e-12)


# --- velocity ------------------------------------------------------------------------


def test_velocity_rms_of_a_tone_in_m_s2() -> None:
    a, k = 3.0, 64  # 156.25 Hz
    freq = k * FS / N
    f = vibration_features(tone(a, k), config())
    expected = a / (2 * math.pi * freq) / math.sqrt(2) * 1000.0
    assert f["bearing_velocity_rms_mm_s"] == pytest.approx(expected, rel=1e-10)


def test_velocity_rms_of_a_tone_in_g() -> None:
    a, k = 0.2, 300  # 732.4 Hz, 0.2 g
    freq = k * FS / N
    f = vibration_features(tone(a, k), config(units="g"))
    expected = a * STANDARD_GRAVITY / (2 * math.pi * freq) / math.sqrt(2) * 1000.0
    assert f["bearing_velocity_rms_mm_s"] == pytest.approx(expected, rel=1e-10)
    # Features other than velocity stay in the input units (g).
    assert f["bearing_rms"] == pytest.approx(a / math.sqrt(2), rel=1e-12)


def test_tones_outside_the_velocity_band_contribute_nothing() -> None:
    # 4.88 Hz (below 10 Hz) and 2500 Hz (above 1000 Hz) around one in-band tone.
    in_band = tone(1.0, 64)
    outside = tone(5.0, 2) + tone(5.0, 1024)
    alone = vibration_features(in_band, config())["bearing_velocity_rms_mm_s"]
    mixed = vibration_features(in_band + outside, config())["bearing_velocity_rms_mm_s"]
    assert mixed == pytest.approx(alone, rel=1e-9)
    only_outside = vibration_features(outside, config())["bearing_velocity_rms_mm_s"]
    assert only_outside == pytest.approx(0.0, abs=1e-9)


def test_velocity_of_two_tones_adds_in_quadrature() -> None:
    v1 = 1.0 / (2 * math.pi * 64 * FS / N) / math.sqrt(2) * 1000.0
    v2 = 0.5 / (2 * math.pi * 200 * FS / N) / math.sqrt(2) * 1000.0
    f = vibration_features(tone(1.0, 64) + tone(0.5, 200), config())
    assert f["bearing_velocity_rms_mm_s"] == pytest.approx(math.hypot(v1, v2), rel=1e-10)


# --- names and configuration ---------------------------------------------------------


def test_feature_names_are_ordered_and_returned_exactly() -> None:
    cfg = config(bands_hz=((0.0, 1000.0), (1000.0, 2012.5)))
    assert feature_names(cfg) == (
        "bearing_rms",
        "bearing_peak",
        "bearing_crest",
        "bearing_kurtosis",
        "bearing_band_0_1000_hz",
        "bearing_band_1000_2012p5_hz",
        "bearing_velocity_rms_mm_s",
    )
    assert tuple(vibration_features(tone(1.0, 64), cfg)) == feature_names(cfg)


def test_features_fit_a_reading() -> None:
    values = vibration_features(tone(1.0, 64), config())
    reading = Reading(seq=0, ts=1_700_000_000.0, values=values)
    assert reading.values == values


def test_without_sample_rate_only_time_domain_features() -> None:
    cfg = VibrationConfig(prefix="pump")
    assert feature_names(cfg) == ("pump_rms", "pump_peak", "pump_crest", "pump_kurtosis")
    assert tuple(vibration_features(tone(1.0, 8, n=64), cfg)) == feature_names(cfg)
    off = config(velocity_band_hz=None)
    assert "bearing_velocity_rms_mm_s" not in feature_names(off)
    assert tuple(vibration_features(tone(1.0, 64), off)) == feature_names(off)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sample_rate_hz": None},  # bands need the rate
        {"bands_hz": ((0.0, 6000.0),)},  # above Nyquist
        {"bands_hz": ((1000.0, 1000.0),)},  # lo == hi
        {"bands_hz": ((-1.0, 1000.0),)},
        {"bands_hz": ((1000.0, 1100.0),)},  # narrower than fs / min_samples = 625 Hz
        {"bands_hz": ((0.0, 1000.0), (0.0, 1000.0))},  # duplicate names
        {"velocity_band_hz": (0.0, 1000.0)},  # 1/f at 0 Hz
        {"velocity_band_hz": (10.0, 6000.0)},
        {"sample_rate_hz": 1000.0, "bands_hz": ()},  # default velocity band > Nyquist
        {"min_samples": 64, "max_samples": 32},
        {"min_samples": 2},
        {"prefix": "bad-name"},
        {"prefix": "9lives"},
        {"sample_rate_hz": float("nan")},
        {"max_abs": float("inf")},
        {"units": "mm/s"},
        {"extra": 1},
    ],
)
def test_invalid_config_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        config(**overrides)


def test_narrow_band_allowed_with_enough_min_samples() -> None:
    cfg = config(bands_hz=((1000.0, 1100.0),), min_samples=4096)
    f = vibration_features(tone(1.0, 420), cfg)  # 1025.4 Hz
    assert f["bearing_band_1000_1100_hz"] == pytest.approx(0.5, rel=1e-10)


# --- refusals ------------------------------------------------------------------------


def refusal(snapshot: object, cfg: VibrationConfig | None = None) -> SensorError:
    with pytest.raises(SensorError) as info:
        vibration_features(snapshot, cfg or config())  # type: ignore[arg-type]
    assert isinstance(info.value, DataError)
    return info.value


def test_wrong_shape() -> None:
    assert refusal(np.zeros((2, 64))).fault is SensorFault.WRONG_SHAPE
    assert refusal(np.array(1.0)).fault is SensorFault.WRONG_SHAPE


@pytest.mark.parametrize(
    "snapshot",
    [
        [0.1, 0.2] * 32,
        np.ones(64, dtype=bool),
        np.ones(64, dtype=np.complex128),
        np.array([0.1] * 64, dtype=object),
        np.array(["0.1"] * 64),
    ],
)
def test_not_numeric(snapshot: object) -> None:
    assert refusal(snapshot).fault is SensorFault.NOT_NUMERIC


def test_too_few_and_too_many_samples() -> None:
    error = refusal(tone(1.0, 1, n=15))
    assert error.fault is SensorFault.TOO_FEW_SAMPLES
    assert "15 samples" in str(error)
    cfg = config(min_samples=16, max_samples=1024)
    assert refusal(tone(1.0, 64, n=1025), cfg).fault is SensorFault.TOO_MANY_SAMPLES
    assert tuple(vibration_features(tone(1.0, 64, n=1024), cfg)) == feature_names(cfg)


def test_non_finite_samples_name_their_count() -> None:
    x = tone(1.0, 64)
    x[[3, 70, 500]] = np.nan
    x[9] = -np.inf
    error = refusal(x)
    assert error.fault is SensorFault.NON_FINITE
    assert error.bad_samples == 4
    assert "4 of 4096 samples" in str(error)
    assert error.dead_sensor


@pytest.mark.parametrize("level", [0.0, 0.98, -3.5])
def test_flat_line_is_a_dead_sensor(level: float) -> None:
    error = refusal(np.full(N, level))
    assert error.fault is SensorFault.FLAT_LINE
    assert error.dead_sensor
    assert error.bad_samples == N


def test_out_of_range_samples() -> None:
    x = tone(1.0, 64)
    x[10] = 2e6
    error = refusal(x)
    assert error.fault is SensorFault.OUT_OF_RANGE
    assert error.bad_samples == 1
    assert not error.dead_sensor


# --- invariants (hypothesis) ---------------------------------------------------------

SIZES = st.integers(min_value=16, max_value=700)
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
CONFIGS = st.sampled_from(
    [config(), config(units="g", velocity_band_hz=None), VibrationConfig(prefix="x")]
)


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float64, SIZES, elements=FINITE), cfg=CONFIGS)
def test_finite_snapshots_give_finite_named_features(x: np.ndarray, cfg: VibrationConfig) -> None:
    try:
        f = vibration_features(x, cfg)
    except SensorError as error:
        # Only a flat line can be refused: sizes, values and dtype are all allowed.
        assert error.fault is SensorFault.FLAT_LINE
        assert np.all(x == x[0])
        return
    assert tuple(f) == feature_names(cfg)
    assert all(math.isfinite(v) for v in f.values())
    _, _, crest, kurtosis = feature_names(cfg)[:4]
    assert f[crest] >= 1.0 - 1e-12  # peak >= rms
    assert f[kurtosis] >= 1.0 - 1e-12  # mean(d^4) >= mean(d^2)^2 (Jensen)


@settings(max_examples=100, deadline=None)
@given(
    x=hnp.arrays(np.float64, SIZES, elements=FINITE),
    data=st.data(),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_snapshots_with_non_finite_samples_are_always_refused(
    x: np.ndarray, data: st.DataObject, bad: float
) -> None:
    positions = data.draw(
        st.sets(st.integers(min_value=0, max_value=x.size - 1), min_size=1, max_size=x.size)
    )
    x[list(positions)] = bad
    error = refusal(x)
    assert error.fault is SensorFault.NON_FINITE
    assert error.bad_samples == len(positions)
