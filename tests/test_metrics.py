"""The quality metrics against values computed by hand or straight from their definitions, on tiny sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from survgen.evaluation.metrics import (
    MetricInputError,
    cmmd,
    density_coverage,
    frechet_distance,
    kernel_distance,
    small_sample_warnings,
)


def _random(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


# ---------------------------------------------------------------- Fréchet distance (FID / FVD)
def test_frechet_distance_of_a_set_to_itself_is_zero():
    real = _random(30, 4, seed=0) * 3
    scale = real.var(dim=0).sum().item()  # the size of the terms that cancel
    assert abs(frechet_distance(real, real)) < 1e-9 * scale


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift():
    # fake = real + c: identical covariances, so the trace term cancels and FD = ‖c‖² = 1 + 4 + 0.25 = 5.25.
    real = _random(25, 3, seed=1)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert frechet_distance(real, real + shift) == pytest.approx(5.25, rel=1e-9)


def test_frechet_distance_matches_the_formula_with_scipy_sqrtm():
    real = _random(40, 5, seed=2)
    fake = _random(30, 5, seed=3, shift=0.3) @ torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0], dtype=torch.float64))
    r, f = real.numpy(), fake.numpy()
    mu_r, mu_f = r.mean(0), f.mean(0)
    cov_r, cov_f = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_r @ cov_f).real
    expected = np.sum((mu_r - mu_f) ** 2) + np.trace(cov_r + cov_f - 2 * covmean)
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_takes_float32_and_is_symmetric():
    real, fake = _random(20, 3, seed=4), _random(15, 3, seed=5, shift=1.0)
    value = frechet_distance(real.float(), fake.float())
    assert value == pytest.approx(frechet_distance(fake, real), rel=1e-5)


# ---------------------------------------------------------------- KID
def _unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with k(a, b) = (⟨a, b⟩ / d + 1)³, from the definition (Bińkowski et al. 2018)."""
    m, d = x.shape

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_with_one_whole_set_subset_is_the_unbiased_mmd():
    real, fake = _random(12, 3, seed=6), _random(12, 3, seed=7, shift=0.5)
    result = kernel_distance(real, fake)  # subset_size defaults to min(1000, 12, 12) = 12: both whole sets
    assert result["subset_size"] == 12 and result["subsets"] == 1
    assert result["mean"] == pytest.approx(_unbiased_poly_mmd(real.numpy(), fake.numpy()), rel=1e-10)
    assert result["std"] == 0


def test_kid_subsets_are_reproducible_and_leave_the_global_rng_alone():
    real, fake = _random(30, 4, seed=8), _random(25, 4, seed=9, shift=0.2)
    state = torch.get_rng_state()
    a = kernel_distance(real, fake, subset_size=10, subsets=20, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == kernel_distance(real, fake, subset_size=10, subsets=20, seed=3)
    assert a["mean"] != kernel_distance(real, fake, subset_size=10, subsets=20, seed=4)["mean"]
    assert a["std"] > 0 and a["subsets"] == 20


def test_kid_subset_size_must_fit_the_smaller_set():
    real, fake = _random(30, 4, seed=10), _random(8, 4, seed=11)
    assert kernel_distance(real, fake, subsets=2)["subset_size"] == 8
    with pytest.raises(MetricInputError, match="subset_size must be between 2 and the smaller set's size 8"):
        kernel_distance(real, fake, subset_size=9)


# ---------------------------------------------------------------- CMMD
def _cmmd_by_definition(x: np.ndarray, y: np.ndarray, sigma: float, scale: float) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)

    def mean_k(a, b):
        return np.mean([[math.exp(-np.sum((p - q) ** 2) / (2 * sigma**2)) for q in b] for p in a])

    return scale * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def test_cmmd_matches_the_definition():
    real, fake = _random(9, 3, seed=12), _random(7, 3, seed=13, shift=0.8)
    expected = _cmmd_by_definition(real.numpy(), fake.numpy(), sigma=10.0, scale=1000.0)
    assert cmmd(real, fake) == pytest.approx(expected, rel=1e-9)
    # a bandwidth near the spread of unit vectors, where the kernel is far from flat
    assert cmmd(real, fake, sigma=0.5, scale=1.0) == pytest.approx(
        _cmmd_by_definition(real.numpy(), fake.numpy(), sigma=0.5, scale=1.0), rel=1e-9)


def test_cmmd_ignores_embedding_length_and_is_zero_for_identical_sets():
    real, fake = _random(9, 3, seed=14), _random(7, 3, seed=15, shift=0.8)
    lengths = torch.linspace(0.1, 50, 9, dtype=torch.float64)[:, None]
    assert cmmd(real * lengths, fake) == pytest.approx(cmmd(real, fake), rel=1e-9)
    assert abs(cmmd(real, real)) < 1e-9


def test_cmmd_refuses_a_zero_embedding():
    real = _random(5, 3, seed=16)
    real[2] = 0
    with pytest.raises(MetricInputError, match="all zeros"):
        cmmd(real, _random(5, 3, seed=17))


# ---------------------------------------------------------------- precision, recall, density, coverage
def test_density_coverage_on_a_hand_made_case():
    # Real: a 3×3 grid of spacing 1. With k = 1 every real point's nearest real neighbour is 1 away: all
    # real balls have radius 1 (and, as in prdc, a point exactly on a boundary is outside).
    real = torch.tensor([[x, y] for x in range(3) for y in range(3)], dtype=torch.float64)
    # Generated: A at the centre of the lower-left cell (0.707 from 4 grid points), B just above (0, 0),
    # C and D a close pair far away.
    fake = torch.tensor([[0.5, 0.5], [0.0, 0.05], [5.0, 5.0], [5.3, 5.0]], dtype=torch.float64)
    result = density_coverage(real, fake, k=1)
    # precision: A and B lie in some real ball, C and D in none → 2/4.
    # density: A lies in 4 real balls ((0,0), (1,0), (0,1), (1,1)), B in 2 ((0,0) at 0.05, (0,1) at 0.95;
    #   (1,0) is 1.001 away), C and D in none → (4 + 2 + 0 + 0) / 4 / k = 1.5.
    # coverage: real points whose nearest generated point is closer than 1: (0,0) (B), (1,0), (0,1),
    #   (1,1) (A) → 4/9; (2,0), (2,1), (0,2), (1,2) are 1.58 from A, (2,2) is 2.12 from A.
    # recall: generated balls (k = 1): A and B are 0.673 apart, C and D 0.3 apart. Only (0,0) lies in one
    #   (B's, at 0.05); the cell corners are 0.707 from A, outside its 0.673 ball → 1/9.
    assert result == pytest.approx({"precision": 0.5, "recall": 1 / 9, "density": 1.5, "coverage": 4 / 9})


def _prdc_by_definition(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    def kth_neighbour(points):
        d = np.linalg.norm(points[:, None] - points[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    r_real, r_fake = kth_neighbour(real), kth_neighbour(fake)
    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (real, fake)
    inside_real = d < r_real[:, None]
    return {
        "precision": inside_real.any(axis=0).mean(),
        "recall": (d < r_fake[None, :]).any(axis=1).mean(),
        "density": inside_real.sum(axis=0).mean() / k,
        "coverage": (d.min(axis=1) < r_real).mean(),
    }


def test_density_coverage_matches_the_definitions():
    real, fake = _random(20, 3, seed=18), _random(15, 3, seed=19, shift=0.7)
    expected = _prdc_by_definition(real.numpy(), fake.numpy(), k=3)
    assert density_coverage(real, fake, k=3) == pytest.approx(expected)


def test_density_coverage_needs_k_plus_two_samples(capsys):
    real = _random(7, 2, seed=20)
    density_coverage(real, _random(7, 2, seed=21), k=5)
    assert capsys.readouterr().out == ""  # prdc's print of the set sizes is swallowed
    with pytest.raises(MetricInputError, match=r"at least 7 samples in each set .*got 7 real and 6 generated"):
        density_coverage(real, _random(6, 2, seed=21), k=5)


# ---------------------------------------------------------------- bad input and small sets
@pytest.mark.parametrize("metric", [frechet_distance, kernel_distance, cmmd, density_coverage])
def test_every_metric_names_what_is_wrong_with_its_input(metric):
    good = _random(10, 3, seed=22)
    with pytest.raises(MetricInputError, match="dimension 3 but generated features 4"):
        metric(good, _random(10, 4, seed=23))
    with pytest.raises(MetricInputError, match=r"shape \(samples, feature_dim\), got shape \(10,\)"):
        metric(good, good[:, 0])
    bad = good.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(MetricInputError, match="1 of 10 samples hold NaN or infinite values"):
        metric(good, bad)
    with pytest.raises(MetricInputError, match="at least .* samples in each set"):
        metric(good[:1], good)


def test_metric_errors_are_value_errors():
    assert issubclass(MetricInputError, ValueError)


def test_small_sample_warnings():
    warnings = small_sample_warnings(10, 12, 64, k=5)
    assert len(warnings) == 3
    fid, kid, prdc = warnings
    assert fid.startswith("FID/FVD") and "compare only numbers computed at the same sample sizes" in fid
    assert kid.startswith("KID") and "subsets of 10" in kid
    assert prdc.startswith("precision/recall/density/coverage") and "k = 5" in prdc
    assert small_sample_warnings(5000, 4000, 2048) == []
    assert len(small_sample_warnings(5000, 4000, 2048, kid_subset_size=50)) == 1
