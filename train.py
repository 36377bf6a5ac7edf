"""The one entrypoint: Hydra composes the config, the harness runs it.

    python train.py optimizer=adamw model=resnet18
    python train.py experiment=xor_rnn_psgd            # a paper setting
    python train.py -m optimizer=sgd,adamw seed=0,1,2   # a sweep (multirun)
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from harness.compose import prepare
from harness.errors import UserError
from harness.tasks import run_task


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg):
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    cfg = prepare(cfg, dict(hydra_cfg.runtime.choices))
    try:
        summary = run_task(cfg, run_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"run directory: {run_dir}")
    return summary.get("final", {}).get("val/loss")


if __name__ == "__main__":
    main()
