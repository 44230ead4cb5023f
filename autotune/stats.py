"""Distribution-free statistics for latencies: median CIs and paired speedup CIs."""
from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def median_ci(samples: np.ndarray) -> tuple[float, float, float]:
    """(median, low, high): the 95% CI of the median from order statistics (no normality assumed)."""
    x = np.asarray(samples, dtype=float)
    if len(x) < 6:  # too few runs for a 95% order-statistic interval
        return float(np.median(x)), float(x.min()), float(x.max())
    ci = stats.quantile_test(x, q=np.median(x), p=0.5).confidence_interval(CONFIDENCE)
    return float(np.median(x)), float(ci.low), float(ci.high)


def speedup_ci(baseline: np.ndarray, candidate: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(speedup, low, high) of median(baseline) / median(candidate) over paired, interleaved runs.

    The pairs are resampled together (paired bootstrap), so drift that hit both runs of a pair
    cancels instead of widening the interval.
    """
    b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    point = float(np.median(b) / np.median(c))
    if len(b) < 6:
        return point, point, point
    res = stats.bootstrap((b, c), lambda bb, cc, axis: np.median(bb, axis) / np.median(cc, axis),
                          paired=True, vectorized=True, n_resamples=2000, method="percentile",
                          confidence_level=CONFIDENCE, rng=np.random.default_rng(seed))
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)
