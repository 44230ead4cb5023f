import numpy as np

from autotune.stats import median_ci, speedup_ci


def test_median_ci_brackets_the_median_and_narrows_with_more_runs():
    rng = np.random.default_rng(0)
    small, large = rng.normal(10, 1, 20), rng.normal(10, 1, 400)
    m, lo, hi = median_ci(small)
    assert lo <= m <= hi
    m2, lo2, hi2 = median_ci(large)
    assert hi2 - lo2 < hi - lo


def test_paired_speedup_ci_cancels_shared_drift():
    rng = np.random.default_rng(0)
    drift = np.linspace(0, 5, 200)  # the machine slows down for both candidates alike
    base = 10 + drift + rng.normal(0, 0.05, 200)
    cand = 5 + drift / 2 + rng.normal(0, 0.05, 200)
    s, lo, hi = speedup_ci(base, cand)
    assert lo <= s <= hi
    identical = speedup_ci(base, base)
    assert identical[1] <= 1.0 <= identical[2]
