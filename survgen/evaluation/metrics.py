"""Distances between real and generated samples, computed on feature matrices.

Every metric takes two feature matrices, `real` `(n, d)` and `fake` `(m, d)`:
one row per frame or clip, as a feature extractor (`survgen.evaluation.features`)
gives them. Features are computed once and shared by all the metrics; all
arithmetic is in float64 on the CPU.

- `frechet_distance`: the Fréchet distance between Gaussians fitted to the two
  sets. On Inception-v3 frame features it is FID (Heusel et al., 2017), on I3D
  clip features FVD (Unterthiner et al., 2018): one formula, so one function.
- `kernel_distance`: KID (Bińkowski et al., 2018), the unbiased squared MMD
  with the cubic polynomial kernel, averaged over random subsets.
- `cmmd`: CMMD (Jayasumana et al., 2024), the squared MMD with a Gaussian
  kernel on L2-normalised CLIP embeddings.
- `density_coverage`: precision and recall (Kynkäänniemi et al., 2019),
  density and coverage (Naeem et al., 2020), from k-nearest-neighbour balls.

FID and KID come from torchmetrics, precision/recall/density/coverage from
prdc (Naeem et al.'s own package): well-kept implementations rather than
copies. torchmetrics' metrics take images and run their own Inception network;
here they get `_Precomputed`, a pass-through "network", so they see the
features as they are. CMMD follows google-research's reference
(`cmmd/distance.py`) line for line, in torch.

Small sets make all of these noisy or biased; `small_sample_warnings` says
when, in plain words, so a report can print it next to the numbers.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import nn

CMMD_SIGMA = 10.0  # the reference's Gaussian kernel bandwidth (_SIGMA)
CMMD_SCALE = 1000.0  # the reference's scale, which makes CMMD values readable (_SCALE)
KID_MAX_SUBSET = 1000  # torchmetrics' and clean-fid's default subset size
MIN_SAMPLES = 2  # a covariance (Fréchet) and a pair of distinct samples (KID) need two


class MetricInputError(ValueError):
    """Feature matrices a metric cannot be computed on: wrong shape, too few samples, NaN or infinite values."""


class _Precomputed(nn.Module):
    """The "feature network" given to torchmetrics: the features are already computed, so it passes them through.

    torchmetrics sizes its state from a `num_features` attribute; without one it
    would run a dummy 299×299 image through the module to find the size.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


# ---------------------------------------------------------------- input checks
def _as_features(x: torch.Tensor, what: str) -> torch.Tensor:
    """`x` as a float64 CPU matrix, or a `MetricInputError` saying what is wrong with it."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise MetricInputError(f"{what}: expected a feature matrix (samples, feature_dim), "
                                   f"got a {type(x).__name__}") from None
    if x.dim() != 2:
        raise MetricInputError(f"{what}: expected a feature matrix of shape (samples, feature_dim), got shape "
                               f"{tuple(x.shape)}; extract features first (survgen.evaluation.features)")
    if x.is_complex() or x.dtype == torch.bool:
        raise MetricInputError(f"{what}: expected real-valued features, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    bad = (~torch.isfinite(x)).any(dim=1)
    if bad.any():
        raise MetricInputError(f"{what}: {int(bad.sum())} of {len(x)} samples hold NaN or infinite values "
                               f"(first: row {int(bad.nonzero()[0])}); check the extractor and the videos it read")
    return x


def _pair(real: torch.Tensor, fake: torch.Tensor, metric: str, min_samples: int, why: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets checked and in float64: the same feature dimension and at least `min_samples` samples each."""
    real, fake = _as_features(real, f"{metric}, real features"), _as_features(fake, f"{metric}, generated features")
    if real.shape[1] != fake.shape[1]:
        raise MetricInputError(f"{metric}: real features have dimension {real.shape[1]} but generated features "
                               f"{fake.shape[1]}; compute both sets with the same feature extractor")
    if real.shape[1] == 0:
        raise MetricInputError(f"{metric}: the features have dimension 0")
    if min(len(real), len(fake)) < min_samples:
        raise MetricInputError(f"{metric} needs at least {min_samples} samples in each set ({why}); got "
                               f"{len(real)} real and {len(fake)} generated")
    return real, fake


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise MetricInputError(f"{name} must be positive (got {value})")


# ---------------------------------------------------------------- metrics
def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID on frame features, FVD on clip features: ‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½).

    Means and (n−1)-normalised covariances of the two sets, through torchmetrics'
    `FrechetInceptionDistance`. Strongly biased upwards for small sets, and the
    covariance is singular with no more samples than feature dimensions:
    compare only values computed at the same sample sizes (`small_sample_warnings`).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _pair(real, fake, "Fréchet distance", MIN_SAMPLES, "a covariance needs two")
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subset_size: int | None = None, subsets: int = 100,
                    seed: int = 0) -> dict:
    """KID: the unbiased squared MMD with kernel k(x, y) = (⟨x, y⟩ / d + 1)³, over random subsets.

    Through torchmetrics' `KernelInceptionDistance` (its default kernel). Each of
    `subsets` draws `subset_size` samples without replacement from each set
    (default: min(1000, both set sizes)); the subsets come from `seed`, so the
    same sets give the same value, and the caller's random state is left alone.
    When `subset_size` equals both set sizes every subset is the whole of both
    sets, so a single one is computed (and the std is 0).

    Returns `{"mean", "std", "subset_size", "subsets"}`: the mean and (population)
    standard deviation over subsets, and the subset size and count used.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _pair(real, fake, "KID", MIN_SAMPLES, "the unbiased estimate compares distinct pairs")
    smaller = min(len(real), len(fake))
    if subset_size is None:
        subset_size = min(KID_MAX_SUBSET, smaller)
    if not MIN_SAMPLES <= subset_size <= smaller:
        raise MetricInputError(f"KID subset_size must be between {MIN_SAMPLES} and the smaller set's size "
                               f"{smaller} (got {subset_size}); leave it out for min({KID_MAX_SUBSET}, set sizes)")
    if subsets < 1:
        raise MetricInputError(f"KID subsets must be at least 1 (got {subsets})")
    if subset_size == len(real) == len(fake):
        subsets = 1
    with warnings.catch_warnings():
        # Said on every construction; these feature sets are small, and held anyway.
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all extracted")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets,
                                         subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets with the global torch.randperm
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std), "subset_size": subset_size, "subsets": subsets}


def cmmd(real: torch.Tensor, fake: torch.Tensor, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD: `scale` × squared MMD with a Gaussian kernel of bandwidth `sigma`, on L2-normalised embeddings.

    As google-research's `cmmd/distance.py`: k(x, y) = exp(−‖x − y‖² / (2σ²)) and
    the minimum-variance (biased) estimate, kernel means over all pairs including
    each sample with itself: scale · (mean K_rr + mean K_ff − 2 mean K_rf). The
    reference's CLIP embedding code returns unit vectors; here the embeddings are
    normalised in this function, so any CLIP embedding (or any other) can be given.
    The kernel matrices are summed in blocks of rows, never held whole.
    """
    _check_positive("CMMD sigma", sigma)
    _check_positive("CMMD scale", scale)
    real, fake = _pair(real, fake, "CMMD", MIN_SAMPLES, "a distance between sets")
    real, fake = _unit_rows(real, "CMMD, real features"), _unit_rows(fake, "CMMD, generated features")
    gamma = 1 / (2 * sigma**2)
    k_rr = _mean_gaussian_kernel(real, real, gamma)
    k_ff = _mean_gaussian_kernel(fake, fake, gamma)
    k_rf = _mean_gaussian_kernel(real, fake, gamma)
    return scale * (k_rr + k_ff - 2 * k_rf)


def _unit_rows(x: torch.Tensor, what: str) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise MetricInputError(f"{what}: {int((norms == 0).sum())} embedding(s) are all zeros and have no direction "
                               "to normalise; check the embedding model's output")
    return x / norms


def _mean_gaussian_kernel(x: torch.Tensor, y: torch.Tensor, gamma: float, block: int = 2048) -> float:
    """Mean of exp(−γ‖x_i − y_j‖²) over all pairs, for unit rows (so ‖x − y‖² = 2 − 2⟨x, y⟩)."""
    total = 0.0
    for start in range(0, len(x), block):
        total += torch.exp(-gamma * (2 - 2 * x[start:start + block] @ y.T)).sum().item()
    return total / (len(x) * len(y))


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict:
    """Precision, recall, density and coverage from `k`-nearest-neighbour balls, through prdc.

    Precision: share of generated samples inside some real sample's ball (the
    ball reaching its k-th nearest real neighbour); recall: share of real samples
    inside some generated sample's ball; density: generated samples' mean count of
    real balls containing them, over k (1 when they fall as the real ones do,
    above 1 when they crowd where real samples are dense); coverage: share of real
    samples whose ball holds a generated sample. Distances are Euclidean and a
    point on a ball's boundary is outside it.

    Returns `{"precision", "recall", "density", "coverage"}`.
    """
    from prdc import compute_prdc

    if k < 1:
        raise MetricInputError(f"density/coverage k must be at least 1 (got {k})")
    # prdc finds each sample's k-th neighbour with numpy.argpartition at position k + 1 (the sample
    # itself comes first), which requires k + 2 samples although k + 1 would define the ball.
    real, fake = _pair(real, fake, "precision/recall/density/coverage", k + 2,
                       f"prdc needs k + 2 samples per set to find each one's k = {k}-th nearest neighbour")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        values = compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=k)
    return {key: float(values[key]) for key in ("precision", "recall", "density", "coverage")}


# ---------------------------------------------------------------- small sets
def small_sample_warnings(n_real: int, n_fake: int, feature_dim: int, *, kid_subset_size: int | None = None,
                          k: int = 5) -> list[str]:
    """Plain-English warnings for metrics computed on sets too small for their value to mean much.

    One sentence per problem, naming the metric; empty when the sizes are
    adequate. `kid_subset_size` as given to `kernel_distance` (None: its default),
    `k` as given to `density_coverage`.
    """
    smaller = min(n_real, n_fake)
    sizes = f"{n_real} real and {n_fake} generated samples"
    found = []
    if smaller <= feature_dim:
        found.append(
            f"FID/FVD: {sizes} for {feature_dim}-dimensional features: a covariance from n samples has rank at "
            f"most n − 1, so these are singular, and the Fréchet distance is strongly biased upwards for small "
            f"sets. The value says little on its own; compare only numbers computed at the same sample sizes.")
    subset = min(KID_MAX_SUBSET, smaller) if kid_subset_size is None else kid_subset_size
    if subset < 100 or smaller < 50:
        found.append(
            f"KID: subsets of {subset} from {sizes}: with fewer than 100 samples per subset (or 50 per set) the "
            f"estimate varies widely between subsets and can be negative; report it with its std, and compare "
            f"only numbers computed at the same subset size.")
    if smaller < 5 * k:
        found.append(
            f"precision/recall/density/coverage: {sizes} with k = {k}: below about {5 * k} samples per set the "
            f"k-nearest-neighbour balls are few and wide, and the four values move in coarse steps of 1/n "
            f"(Naeem et al. used 10,000 samples); read them as rough indications only.")
    return found
