"""W&B in offline mode writes its files into the run directory, with no network and no API key."""

import pytest

from tests.harness.helpers import run


@pytest.mark.slow
def test_wandb_offline_writes_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=3", "logger=wandb"], tmp_path)
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb")), "the offline run holds its event log"
    assert (tmp_path / "wandb_id.txt").read_text().strip() in offline_runs[0].name
