"""The git state a run's summary records is the checkout's state when the run started."""

import subprocess

import pytest
import torch

from harness import run_info


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def scratch_repo(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    monkeypatch.setattr(run_info, "REPO", tmp_path)
    run_info.git_state.cache_clear()
    yield tmp_path
    run_info.git_state.cache_clear()


def test_an_edit_made_after_the_first_ask_does_not_change_the_recorded_state(scratch_repo):
    head = git(scratch_repo, "rev-parse", "HEAD")
    assert run_info.git_state() == (head, False)
    (scratch_repo / "code.py").write_text("x = 2\n")  # edited while the run trains
    assert run_info.git_state() == (head, False)
    run_info.git_state.cache_clear()  # a new process would see the edit
    assert run_info.git_state() == (head, True)


def test_run_task_records_the_state_before_the_task_runs(scratch_repo, monkeypatch):
    from omegaconf import OmegaConf

    from harness import tasks

    def edit_then_summarise(cfg, run_dir):
        (scratch_repo / "code.py").write_text("x = 3\n")
        return {"git_dirty": run_info.environment(torch.device("cpu"))["git_dirty"]}

    monkeypatch.setitem(tasks.TASKS, "edit_then_summarise", edit_then_summarise)
    summary = tasks.run_task(OmegaConf.create({"task": {"name": "edit_then_summarise"}}), scratch_repo)
    assert summary == {"git_dirty": False}
