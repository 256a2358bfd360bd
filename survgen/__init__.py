"""survgen: SurV-Gen, class-conditioned surgical video generation.

Two-stage latent video diffusion (a 2D text-conditioned spatial model, then
temporal transformer blocks trained per class) plus rejection sampling with a
video classifier, to rebalance imbalanced surgical video datasets.
"""

__version__ = "0.1.0"
