"""Generation: class-conditioned videos from a stage-2 run, filtered by rejection sampling."""
