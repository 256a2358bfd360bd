"""Paired differences over seeds, with 95 % intervals: is an arm's gain outside the noise of training?

Two arms trained with the same seeds are compared seed by seed (the seed fixes
the recogniser's initial weights and data order), so the spread of training
itself cancels in part. The interval is Student's t over the n paired
differences: mean ± t(0.975, n − 1) · sd / √n. With fewer than two pairs there
is no interval.
"""

from __future__ import annotations

import math

# t(0.975, df) for df = 1 … 30, to three decimals; above that the Cornish-Fisher expansion below is within 1e-4.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_difference(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict:
    """`arm − baseline` over the seeds both have a value for: mean, 95 % interval, and which side of zero it is.

    `verdict`: "gain" or "loss" when the interval excludes zero, "within noise" when it does not, and
    "too few seeds" below two pairs.
    """
    differences = [arm[s] - baseline[s] for s in sorted(arm.keys() & baseline.keys())
                   if arm[s] is not None and baseline[s] is not None]
    n = len(differences)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "verdict": "too few seeds"}
    mean = sum(differences) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "verdict": "too few seeds"}
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "gain" if low > 0 else ("loss" if high < 0 else "within noise")
    return {"mean": mean, "low": low, "high": high, "n": n, "verdict": verdict}
