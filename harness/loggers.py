"""Where metrics go: always `metrics.jsonl` in the run directory; optionally Weights & Biases as well.

Tables are built from the local files, never from W&B. W&B runs offline when no API key is configured
(so it never waits on a network), and a resumed run continues the same W&B run.
"""

import json
import netrc
import os
import secrets
from pathlib import Path

from harness.atomic import replace_from_temporary


class MetricsFile:
    """Appends one JSON object per line to `<run_dir>/metrics.jsonl`."""

    def __init__(self, run_dir, resume_step=None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self.handle = open(self.path, "a")

    def _truncate_after(self, step):
        """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        text = "".join(line + "\n" for line in kept)
        replace_from_temporary(lambda temporary: temporary.write_text(text), self.path)

    def log(self, record):
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self):
        self.handle.close()


def wandb_api_key_configured():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger:
    def __init__(self, cfg, run_dir, config, name):
        import wandb

        mode = os.environ.get("WANDB_MODE") or cfg.get("mode", "online")
        if mode == "online" and not wandb_api_key_configured():
            print("W&B: no API key configured, logging offline (sync later with `wandb sync`)")
            mode = "offline"
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=cfg.get("project"), entity=cfg.get("entity"), group=cfg.get("group"), tags=list(cfg.get("tags") or []),
            name=name, config=config, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
            settings=wandb.Settings(init_timeout=60, silent=True),
        )

    def log(self, record):
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def summary(self, summary):
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.run.summary[key] = value

    def close(self):
        self.run.finish()


class Loggers:
    """The local metrics file plus, when `logger.name == "wandb"`, a W&B run."""

    def __init__(self, cfg, run_dir, config, name, resume_step=None, enabled=True):
        self.enabled = enabled  # only the main process logs
        self.metrics = MetricsFile(run_dir, resume_step) if enabled else None
        self.wandb = WandbLogger(cfg, run_dir, config, name) if enabled and cfg.get("name") == "wandb" else None

    def log(self, record):
        if self.metrics:
            self.metrics.log(record)
        if self.wandb:
            self.wandb.log(record)

    def close(self, summary=None):
        if self.wandb:
            if summary:
                self.wandb.summary(summary)
            self.wandb.close()
        if self.metrics:
            self.metrics.close()
