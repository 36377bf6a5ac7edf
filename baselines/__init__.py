"""Baselines written here: K-FAC and Shampoo (see baselines_notes.md §1.4 and §2.3), and a thin AdaHessian
wrapper over pytorch_optimizer that follows the training-loop closure protocol."""

from baselines.adahessian import AdaHessian
from baselines.kfac import KFAC
from baselines.shampoo import Shampoo

__all__ = ["AdaHessian", "KFAC", "Shampoo"]
