"""Atomic checkpoints and resumption.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then renamed over
its final name (rename is atomic on POSIX), so a crash never leaves a half-written `step_*.pt`. Loading
uses `weights_only=True`; a truncated or corrupt latest checkpoint falls back to the previous one.
"""

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from harness.atomic import replace_from_temporary
from harness.errors import ConfigError


def rng_state():
    """Every random-number state a run uses, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path):
    path = Path(path)

    def write_synced(temporary):
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())

    replace_from_temporary(write_synced, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class CheckpointManager:
    """Keeps the last `keep` checkpoints of a run under `<run_dir>/checkpoints/step_XXXXXXXX.pt`."""

    def __init__(self, run_dir, keep=2):
        self.directory = Path(run_dir) / "checkpoints"
        self.keep = max(int(keep), 1)

    def paths(self):
        """Existing checkpoint files, newest first."""
        return sorted(self.directory.glob("step_*.pt"), reverse=True)

    def save(self, step, payload):
        path = self.directory / f"step_{step:08d}.pt"
        save_atomic({**payload, "step": step}, path)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location="cpu"):
        """The newest checkpoint that loads, or None; warns about each one skipped as unreadable."""
        for path in self.paths():
            try:
                return torch.load(path, map_location=map_location, weights_only=True), path
            except Exception as error:  # truncated file, bad zip, unpickling error: fall back to an older one
                warnings.warn(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); trying the previous one")
        return None, None


def model_weights_from(source):
    """The model weights a run starts from with `trainer.init_from`: a checkpoint file, or the newest readable
    checkpoint of a run directory (PSGD paper Fig. 2a trains on clean labels from a model trained on noisy ones)."""
    path = Path(source).expanduser()
    if path.is_dir():
        payload = CheckpointManager(path).load_latest()[0]
    else:
        payload = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if not isinstance(payload, dict) or "model" not in payload:
        raise ConfigError(f"trainer.init_from={str(source)!r} holds no readable checkpoint: give a run directory with "
                          "checkpoints/ (run it with checkpoint.at_end=true) or a step_*.pt file")
    return payload["model"]
