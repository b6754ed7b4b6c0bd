"""Length distributions: exact small cases, the clipped-lognormal mean, presets."""
import math
from pathlib import Path

import numpy as np
import pytest

from workloads.lengths import (
    LENGTH_PRESETS,
    EmpiricalLength,
    ExponentialLength,
    FixedLength,
    LognormalLength,
    UniformLength,
    clipped_lognormal_mean,
    lognormal_mu_for_mean,
)

PUBLISHED_MEANS = {  # vLLM paper, Fig. 11
    ("sharegpt", "prompt"): 161.31,
    ("sharegpt", "output"): 337.99,
    ("alpaca", "prompt"): 19.31,
    ("alpaca", "output"): 58.45,
}


def test_fixed_length_and_its_clip():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(FixedLength(7).sample(3, rng), [7, 7, 7])
    np.testing.assert_array_equal(FixedLength(10, max_tokens=5).sample(2, rng), [5, 5])
    assert FixedLength(7).sample(3, rng).dtype == np.int64


def test_uniform_includes_both_ends():
    tokens = UniformLength(3, 5).sample(3000, np.random.default_rng(1))
    values, counts = np.unique(tokens, return_counts=True)
    np.testing.assert_array_equal(values, [3, 4, 5])
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.03)


def test_uniform_is_clipped():
    tokens = UniformLength(1, 10, min_tokens=4, max_tokens=6).sample(500, np.random.default_rng(2))
    np.testing.assert_array_equal(np.unique(tokens), [4, 5, 6])


def test_closed_form_without_clipping_is_the_lognormal_mean():
    assert clipped_lognormal_mean(5.0, 1.0, 1e-300, math.inf) == pytest.approx(math.exp(5.5), rel=1e-12)


def test_closed_form_matches_a_monte_carlo_of_the_clipped_lognormal():
    raw = np.random.default_rng(3).lognormal(5.0, 1.0, size=2_000_000)
    expected = float(np.mean(np.clip(raw, 10, 500)))
    assert clipped_lognormal_mean(5.0, 1.0, 10, 500) == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("mean, sigma, low, high", [
    (200.0, 1.0, 1, None), (900.0, 1.5, 1, 1024), (2.0, 2.0, 1, None), (19.31, 1.0, 1, 1024),
])
def test_mu_solve_hits_the_requested_clipped_mean(mean, sigma, low, high):
    mu = lognormal_mu_for_mean(mean, sigma, low, high)
    upper = math.inf if high is None else high
    assert clipped_lognormal_mean(mu, sigma, low, upper) == pytest.approx(mean, rel=1e-9)


def test_mu_without_clipping_is_the_textbook_value():
    mu = lognormal_mu_for_mean(200.0, 1.0, 1, None)
    assert mu == pytest.approx(math.log(200.0) - 0.5, abs=1e-6)


@pytest.mark.parametrize("mean, sigma, max_tokens", [(200.0, 1.0, 2048), (900.0, 1.5, 1024)])
def test_lognormal_sample_mean_and_bounds(mean, sigma, max_tokens):
    tokens = LognormalLength(mean, sigma, min_tokens=2, max_tokens=max_tokens).sample(
        400_000, np.random.default_rng(4))
    assert tokens.dtype == np.int64
    assert tokens.min() >= 2 and tokens.max() <= max_tokens
    assert np.mean(tokens) == pytest.approx(mean, rel=0.01)


@pytest.mark.parametrize("preset, column", list(PUBLISHED_MEANS))
def test_presets_reproduce_the_published_means(preset, column):
    distribution = getattr(LENGTH_PRESETS[preset], column)
    tokens = distribution.sample(200_000, np.random.default_rng(5))
    assert np.mean(tokens) == pytest.approx(PUBLISHED_MEANS[(preset, column)], rel=0.03)
    assert tokens.min() >= 1 and tokens.max() <= 1024


def test_preset_pairs_fit_a_2048_token_context():
    pair = LENGTH_PRESETS["sharegpt"]
    rng = np.random.default_rng(6)
    assert np.max(pair.prompt.sample(50_000, rng) + pair.output.sample(50_000, rng)) <= 2048


def test_empirical_resamples_observed_values_and_clips():
    rng = np.random.default_rng(8)
    tokens = EmpiricalLength(np.array([5, 7])).sample(1000, rng)
    np.testing.assert_array_equal(np.unique(tokens), [5, 7])
    assert abs(np.mean(tokens == 5) - 0.5) < 0.05
    clipped = EmpiricalLength(np.array([5, 7]), max_tokens=6).sample(100, rng)
    np.testing.assert_array_equal(np.unique(clipped), [5, 6])


def test_same_seed_gives_identical_lengths():
    distribution = LognormalLength(100.0, 1.2, max_tokens=4096)
    first = distribution.sample(100, np.random.default_rng(9))
    np.testing.assert_array_equal(first, distribution.sample(100, np.random.default_rng(9)))


@pytest.mark.parametrize("make, message", [
    (lambda: LognormalLength(1.0, 1.0), "strictly between min_tokens"),
    (lambda: LognormalLength(2000.0, 1.0, max_tokens=1024), "strictly between min_tokens"),
    (lambda: LognormalLength(100.0, 0.0), "sigma must be"),
    (lambda: UniformLength(5, 3), "1 <= low <= high"),
    (lambda: FixedLength(0), "value must be >= 1"),
    (lambda: FixedLength(3, min_tokens=5, max_tokens=4), "max_tokens \\(4\\) must be >= min_tokens \\(5\\)"),
    (lambda: EmpiricalLength(np.array([], dtype=np.int64)), "non-empty"),
    (lambda: EmpiricalLength(np.array([3, 0])), ">= 1"),
])
def test_bad_parameters_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_exponential_lengths_match_their_law():
    """P(tokens <= k) = 1 - exp(-k / mean) for whole k below the cap (the
    draw is rounded up); the cap takes the tail's mass."""
    tokens = ExponentialLength(mean=128.0).sample(200_000, np.random.default_rng(0))
    assert tokens.min() >= 1
    for k in (1, 32, 128, 512):
        assert abs((tokens <= k).mean() - (1 - np.exp(-k / 128.0))) < 0.005
    assert abs(tokens.mean() - 128.5) < 1.5          # rounding up adds about half a token
    capped = ExponentialLength(mean=128.0, max_tokens=256).sample(200_000, np.random.default_rng(0))
    assert capped.max() == 256
    assert abs((capped == 256).mean() - np.exp(-255 / 128.0)) < 0.005


def test_offline_throughput_config_draws_exponential_outputs():
    from experiments.config import load_config

    cfg, _ = load_config(Path(__file__).parents[1] / "experiments" / "configs" / "offline_throughput.yaml")
    output = cfg.workload.lengths.output
    assert (output.dist, output.mean, output.max_tokens) == ("exponential", 128, 1536)
