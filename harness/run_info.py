"""Facts about a run that its summary records: code version, machine, device, library versions."""

import functools
import platform
import resource
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@functools.cache
def git_state():
    """(commit, dirty) of the repository holding this code, or (None, None) outside a git checkout.

    Asked once per process (`run_task` asks before training starts) and remembered: the summary then
    describes the code this process imported, not edits made to the checkout while it trained."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True)
        return commit, bool(status.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device):
    """Peak accelerator memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def environment(device):
    commit, dirty = git_state()
    return {
        "git_commit": commit, "git_dirty": dirty, "host": platform.node(), "device": device_name(device),
        "torch_version": torch.__version__, "python_version": platform.python_version(),
    }
