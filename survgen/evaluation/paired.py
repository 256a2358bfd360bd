"""Paired differences over seeds, with 95 % intervals: is an arm's gain outside the noise of training?

Two arms trained with the same seeds are compared seed by seed (the seed fixes
the recogniser's initial weights and data order), so the spread of training
itself cancels in part. The interval is Student's t over the n paired
differences: mean ± t(0.975, n − 1) · sd / √n. With fewer than two pairs there
is no interval.

Two further questions are answered from the same seeds:
- What share of a positive control's gain does an arm recover? The ratio of
  the two mean gains, with Fieller's 95 % interval (the set of ratios r for
  which `arm − r · control` is within noise of zero, seed by seed), which is
  bounded only when the control's own gain is outside the noise.
- How small a gain could these seeds tell from zero? The minimum detectable
  effect (t(0.975) + t(0.8)) · sd / √n: a true gain of that size gives an
  interval above zero in 80 % of experiments.
"""

from __future__ import annotations

import math

# t(p, df) for df = 1 … 30, to three decimals; above that the Cornish-Fisher expansion below is within 1e-4.
_T = {
    0.975: (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
            2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
            2.042),
    0.8: (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868, 0.866,
          0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854),
}
_Z = {0.975: 1.959964, 0.8: 0.841621}
POWER = 0.8  # the chance a minimum detectable effect is detected, as is usual in planning trials


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom, for p = 0.975 (intervals) or 0.8 (power)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T[p]):
        return _T[p][df - 1]
    z = _Z[p]
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t: the half-width factor of a 95 % interval."""
    return t_quantile(0.975, df)


def paired_difference(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict:
    """`arm − baseline` over the seeds both have a value for: mean, 95 % interval, and which side of zero it is.

    `verdict`: "gain" or "loss" when the interval excludes zero, "within noise" when it does not, and
    "too few seeds" below two pairs.
    """
    values = list(differences(arm, baseline).values())
    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "verdict": "too few seeds"}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "verdict": "too few seeds"}
    sd = math.sqrt(sum((d - mean) ** 2 for d in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "gain" if low > 0 else ("loss" if high < 0 else "within noise")
    return {"mean": mean, "low": low, "high": high, "n": n, "verdict": verdict}


def differences(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict[int, float]:
    """`arm − baseline` per seed, over the seeds where both have a value."""
    return {s: arm[s] - baseline[s] for s in sorted(arm.keys() & baseline.keys())
            if arm[s] is not None and baseline[s] is not None}


def ratio_of_gains(arm: dict[int, float], control: dict[int, float]) -> dict:
    """mean(arm) / mean(control) of two gains per seed (each against the same baseline), with Fieller's 95 %
    interval; `low`/`high` are None where the interval is unbounded (the control's gain is within noise)."""
    seeds = sorted(arm.keys() & control.keys())
    n = len(seeds)
    if n < 2:
        return {"ratio": None, "low": None, "high": None, "n": n}
    a, c = [arm[s] for s in seeds], [control[s] for s in seeds]
    ma, mc = sum(a) / n, sum(c) / n
    vaa, vcc, vac = (sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (n - 1) / n
                     for xs, mx, ys, my in ((a, ma, a, ma), (c, mc, c, mc), (a, ma, c, mc)))
    t2 = t975(n - 1) ** 2
    # (ma − r·mc)² ≤ t² · var(ma − r·mc): a quadratic A r² − 2 B r + C ≤ 0
    A, B, C = mc**2 - t2 * vcc, ma * mc - t2 * vac, ma**2 - t2 * vaa
    ratio = ma / mc if mc else None
    if A <= 0:
        return {"ratio": ratio, "low": None, "high": None, "n": n}
    root = math.sqrt(max(B * B - A * C, 0.0))
    return {"ratio": ratio, "low": (B - root) / A, "high": (B + root) / A, "n": n}


def minimum_detectable_effect(sd: float, n: int) -> float | None:
    """The smallest true gain that `n` paired seeds of spread `sd` show outside the noise with 80 % power."""
    if n < 2:
        return None
    return (t975(n - 1) + t_quantile(POWER, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, effect: float, most: int = 1000) -> int | None:
    """The fewest seeds whose minimum detectable effect is at most `effect` (None beyond `most`)."""
    if effect <= 0:
        return None
    if sd == 0:
        return 2
    return next((n for n in range(2, most + 1) if minimum_detectable_effect(sd, n) <= effect), None)
