"""The training harness: models, datasets, the one training loop, checkpoints, metrics and logging.

Optimizer packages (llqr/, psgd/, baselines/) never import from here; the harness reaches them through
the protocol in `harness.protocol`.
"""
