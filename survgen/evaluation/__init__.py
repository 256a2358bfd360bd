"""Evaluation: quality metrics, feature extractors, the downstream rebalancing test and its report."""
