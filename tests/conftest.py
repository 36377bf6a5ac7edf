import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# One thread and no W&B network for the whole suite (CI sets these too).
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")
if "REPRO_DATA_MIRROR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["REPRO_DATA_MIRROR"] = str(SHARED_DATA)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh, empty data cache for one test."""
    root = tmp_path / "data_cache"
    monkeypatch.setenv("REPRO_DATA_ROOT", str(root))
    return root
