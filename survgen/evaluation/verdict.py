"""Can the downstream experiment judge a generator? Its controls, read from the runs of every seed.

The experiment judges a score only once its positive control (real held-out
clips where synthetic ones would go) shows a gain outside the noise on it (the
Jaccard index of each rare class; in a two-class task, balanced accuracy). It
passes when it does on every score. On each score it judges, every other arm's
gain is given as a fraction of the control's, with an interval: "this generator
recovers 60 % [35, 85] of what real data would give". On the others the
fractions are left out and the report says the experiment cannot judge there.

Also from the same runs: whether the negative control (labels rotated) shows
the harm it must, what the codec control costs against the positive control,
and per score the minimum detectable effect of these seeds, with the seeds a
gain the size of the control's would need.
"""

from __future__ import annotations

import math

from survgen.evaluation.paired import (differences, minimum_detectable_effect, paired_difference, ratio_of_gains,
                                       seeds_needed)

Scores = dict[int, dict]  # seed -> a run's test scores


def score_keys(rare: list[str], binary: bool) -> list[tuple[str, str | None]]:
    """The scores a control is judged on: `(metric, class code)` per rare class, or balanced accuracy."""
    return [("balanced_accuracy", None)] if binary else [("jaccard", code) for code in rare]


def score_name(key: tuple[str, str | None]) -> str:
    metric, code = key
    return f"Jaccard {code}" if code else metric.replace("_", " ")


def _values(runs: Scores, key: tuple[str, str | None]) -> dict[int, float | None]:
    metric, code = key
    return {seed: (test["per_class"][code][metric] if code else test.get(metric)) for seed, test in runs.items()}


def judge(by_arm: dict[str, Scores], arms: list[dict], rare: list[str], binary: bool) -> dict:
    """The controls' verdicts, the minimum detectable effects and (with a passing control) each arm's fraction."""
    real = arms[0]["name"]
    role = {a["name"]: a.get("control") for a in arms}
    positive = next((name for name, r in role.items() if r == "positive"), None)
    keys = score_keys(rare, binary)
    base = {key: _values(by_arm[real], key) for key in keys}

    def gains(name: str, key) -> dict[int, float]:
        return differences(_values(by_arm[name], key), base[key])

    result: dict = {"positive_control": positive, "scores": [score_name(k) for k in keys],
                    "minimum_detectable_effect": _detectable(real, role, keys, gains, positive)}
    if positive is None:
        result["passed"] = None
        return result
    control = {score_name(k): paired_difference(_values(by_arm[positive], k), base[k]) for k in keys}
    result["control_gain"] = control
    judged = [k for k in keys if control[score_name(k)]["verdict"] == "gain"]
    result["judged"] = [score_name(k) for k in judged]
    result["passed"] = len(judged) == len(keys)
    result.update(_other_controls(by_arm, arms, base, positive, binary))
    if judged:
        result["fractions"] = {name: {score_name(k): ratio_of_gains(gains(name, k), gains(positive, k))
                                      for k in judged}
                               for name, r in role.items() if name != real and r is None}
    return result


def _other_controls(by_arm: dict[str, Scores], arms: list[dict], base: dict, positive: str, binary: bool) -> dict:
    """The negative control's harm on the classes it mislabels, and the codec control against the positive one."""
    out = {}
    for arm in arms:
        if arm.get("control") == "negative":
            keys = score_keys(sorted(arm["labelled_as"]), binary)
            harm = {score_name(k): paired_difference(_values(by_arm[arm["name"]], k), base[k]) for k in keys}
            out["negative_control"] = {"arm": arm["name"], "harm": harm,
                                       "shows_harm": all(d["verdict"] == "loss" for d in harm.values())}
        if arm.get("control") == "codec":
            out["codec_control"] = {"arm": arm["name"], "against": positive, "difference": {
                score_name(k): paired_difference(_values(by_arm[arm["name"]], k), _values(by_arm[positive], k))
                for k in base}}
    return out


def _detectable(real: str, role: dict, keys: list, gains, positive: str | None) -> dict:
    """Per score: the spread of the paired gains (pooled over the arms against real, the negative control left
    out), the smallest gain these seeds detect, and the seeds a gain the size of the control's would need."""
    out = {}
    for key in keys:
        variances, n = [], 0
        for name, r in role.items():
            d = list(gains(name, key).values()) if name != real and r != "negative" else []
            if len(d) >= 2:
                mean = sum(d) / len(d)
                variances.append(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
                n = max(n, len(d))
        if not variances:
            continue
        sd = math.sqrt(sum(variances) / len(variances))
        entry = {"sd": sd, "seeds": n, "effect": minimum_detectable_effect(sd, n)}
        if positive is not None and (g := list(gains(positive, key).values())):
            entry["seeds_for_control_gain"] = seeds_needed(sd, sum(g) / len(g))
        out[score_name(key)] = entry
    return out
