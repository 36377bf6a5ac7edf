"""The one training loop, for every model, dataset and optimizer (nanoGPT-style: read it top to bottom).

`train(cfg, run_dir)` builds everything from the composed config, resumes from the newest checkpoint in
`run_dir` when there is one, trains, evaluates, checkpoints, and writes `summary.json`. The loop never
branches on the optimizer: everything an optimizer needs reaches it through `harness.protocol`.
"""

import json
import math
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from harness.checkpoint import CheckpointManager, rng_state, set_rng_state
from harness.data import DataPaths, build_dataset, to_device
from harness.errors import ConfigError, NonFiniteLossError
from harness.loggers import Loggers
from harness.metrics import evaluate, final_metrics
from harness.models import build_model
from harness.protocol import LossClosure, build_optimizer, l2_regularizer, loss_function
from harness.run_info import environment, peak_memory_mb
from harness.schedules import Schedule
from harness.tasks import register_task


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=cpu or auto")
    return device


def configure_determinism(trainer):
    if trainer.num_threads:
        torch.set_num_threads(int(trainer.num_threads))
    if trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def total_steps_of(trainer, dataset):
    if trainer.max_steps:
        if trainer.max_steps < 1:
            raise ConfigError(f"trainer.max_steps={trainer.max_steps} is invalid: it must be >= 1")
        return int(trainer.max_steps)
    if not trainer.epochs or not dataset.steps_per_epoch:
        raise ConfigError("set trainer.max_steps (or trainer.epochs for a dataset with epochs)")
    return int(trainer.epochs * dataset.steps_per_epoch)


def autocast_for(precision, device):
    if precision == "fp32":
        return None
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise ConfigError(f"trainer.precision={precision!r} is invalid; choose 'fp32' or 'bf16'")


@register_task("supervised")
def train(cfg, run_dir, is_main=True):
    """Train as `cfg` says, writing everything into `run_dir`. Returns the summary dict."""
    run_dir = Path(run_dir)
    trainer = cfg.trainer
    torch.manual_seed(cfg.seed)
    configure_determinism(trainer)
    device = resolve_device(trainer.device)

    # -- data, model, optimizer, schedule -----------------------------------------------------------
    dataset = build_dataset(cfg.dataset, DataPaths.from_config(cfg.data), cfg.seed)
    model = build_model(cfg.model, dataset.info).to(device)
    total_steps = total_steps_of(trainer, dataset)
    sample_generator = torch.Generator().manual_seed(cfg.seed + 104_729)

    def sample_batch(batch_size):
        inputs, targets = dataset.sample_batch(batch_size, sample_generator)
        return to_device(inputs, device), to_device(targets, device)

    optimizer = build_optimizer(cfg.optimizer, model, dataset.loss, sample_batch)
    schedule = Schedule(cfg.schedule, total_steps, dataset.steps_per_epoch)
    schedule.attach(optimizer)
    loss_fn = loss_function(dataset.loss)
    regularizer = l2_regularizer(trainer.l2, trainer.l2_randomized, trainer.l2_exclude_norm_and_bias)
    autocast = autocast_for(trainer.precision, device)
    forward_model = torch.compile(model) if trainer.compile else model

    # -- resume ------------------------------------------------------------------------------------
    checkpoints = CheckpointManager(run_dir, cfg.checkpoint.keep)
    start_step, best, last_checkpoint = 0, {}, None
    if cfg.checkpoint.resume:
        payload, last_checkpoint = checkpoints.load_latest()
        if payload is not None:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            sample_generator.set_state(payload["sample_generator"])
            set_rng_state(payload["rng"])
            start_step, best = payload["step"], payload["best"]
            print(f"resumed from {last_checkpoint} at step {start_step}")

    def save_checkpoint(step):
        if not is_main:
            return None
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                   "sample_generator": sample_generator.get_state(), "best": best}
        return checkpoints.save(step, payload)

    config = OmegaConf.to_container(cfg, resolve=True)
    loggers = Loggers(cfg.logger, run_dir, config, run_dir.name, resume_step=start_step if start_step else None, enabled=is_main)
    print(f"{cfg.model.name} on {cfg.dataset.name} with {cfg.optimizer._target_}: {total_steps} steps on {device}")

    # -- train -------------------------------------------------------------------------------------
    train_time, timed_steps, step, stopped = 0.0, 0, start_step, "max_steps"
    last_loss = math.nan
    progress = tqdm(total=total_steps, initial=start_step, disable=not trainer.progress, dynamic_ncols=True)
    while step < total_steps:
        started = time.perf_counter()
        schedule.apply(optimizer, step)
        model.train()
        inputs, targets = to_device(dataset.train_batch(step), device)
        closure = LossClosure(forward_model, inputs, targets, loss_fn, regularizer, trainer.grad_clip, autocast)
        closure.model = model
        optimizer.step(closure)
        last_loss = float(closure.data_loss)
        if not math.isfinite(last_loss):
            raise NonFiniteLossError(
                f"the loss is {last_loss} at step {step}; training stopped. Last good checkpoint: "
                f"{last_checkpoint or 'none written yet'}. Lower the learning rate or set trainer.grad_clip."
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - started
        timed_steps += 1
        step += 1
        progress.update(1)
        if step % trainer.log_every == 0 or step == total_steps:
            loggers.log({"step": step, "train/loss": last_loss, "lr": optimizer.param_groups[0]["lr"]})
            progress.set_postfix(loss=f"{last_loss:.4g}")
        target_reached = trainer.stop_at_train_loss is not None and last_loss < trainer.stop_at_train_loss
        if target_reached:
            stopped = "target_train_loss"
        if (trainer.eval_every and step % trainer.eval_every == 0) or step == total_steps or target_reached:
            metrics = evaluate(model, dataset, loss_fn, device, autocast)
            if metrics:
                _update_best(best, metrics, step)
                loggers.log({"step": step, **metrics})
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < total_steps and not target_reached:
            last_checkpoint = save_checkpoint(step)
        if target_reached:
            break
    progress.close()
    if cfg.checkpoint.at_end:
        save_checkpoint(step)
    extra = final_metrics(model, dataset, device)
    if extra:
        best.setdefault("last", {}).update(extra)
        loggers.log({"step": step, **extra})

    # -- summary -----------------------------------------------------------------------------------
    summary = {
        "model": cfg.model.name, "dataset": cfg.dataset.name, "optimizer": cfg.optimizer._target_,
        "choices": dict(cfg.get("choices") or {}), "experiment": cfg.get("experiment_name"), "seed": cfg.seed,
        "steps": step, "total_steps": total_steps, "stopped": stopped,
        "final": {"train/loss": last_loss, **best.get("last", {})},
        "best": {k: v for k, v in best.items() if k != "last"},
        "ms_per_step": 1000.0 * train_time / max(timed_steps, 1), "peak_memory_mb": peak_memory_mb(device),
        "seed_of_data": cfg.dataset.get("seed", cfg.seed), **environment(device),
    }
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    loggers.close(summary)
    return summary


def _update_best(best, metrics, step):
    """Track the last evaluation and, per metric, the best value and its step (min for losses, max otherwise)."""
    best["last"] = dict(metrics)
    for key, value in metrics.items():
        lower_is_better = key.endswith("loss") or key.endswith("perplexity")
        previous = best.get(key)
        if previous is None or (value < previous["value"] if lower_is_better else value > previous["value"]):
            best[key] = {"value": value, "step": step}
