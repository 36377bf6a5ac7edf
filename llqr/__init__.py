"""LLQR: Layerwise LQR for geometry-aware optimization (llqr_spec.md). Exact reference in llqr.exact."""
from llqr import exact  # noqa: F401
from llqr.optimizer import LLQR  # noqa: F401,E402
from llqr.objective import LQRObjective  # noqa: F401,E402
