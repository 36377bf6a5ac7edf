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

from harness.checkpoint import CheckpointManager, model_weights_from, rng_state, set_rng_state
from harness.data import DataPaths, build_dataset, to_device
from harness.distributed import Distributed
from harness.errors import ConfigError, NonFiniteLossError
from harness.example_stats import ExampleStatistics
from harness.loggers import Loggers
from harness.metrics import DistanceFromInit, evaluate, final_metrics
from harness.models import build_model
from harness.preemption import PreemptionGuard
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
def train(cfg, run_dir):
    """Train as `cfg` says, writing everything into `run_dir`. Returns the summary dict."""
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.seed)
    configure_determinism(cfg.trainer)
    ranks = Distributed.from_environment(cfg.trainer.device)
    device = ranks.device(resolve_device(cfg.trainer.device))
    run = build_run(cfg, device)
    distance_from_init = DistanceFromInit(run.model) if cfg.trainer.get("distance_from_init") else None
    if ranks.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    record = RunRecord(cfg, run, run_dir, ranks)
    if ranks.is_main:
        print(f"{cfg.model.name} on {cfg.dataset.name} with {cfg.optimizer._target_}: {run.total_steps} steps on {device}"
              + (f" x {ranks.world_size} processes" if ranks.active else ""))
    with PreemptionGuard() as preemption:
        run_steps(cfg, run, record, ranks, preemption)
    if cfg.checkpoint.at_end:
        record.save_checkpoint()
    extra = final_metrics(run.model, run.dataset, device)
    if distance_from_init is not None:
        extra.update(distance_from_init(run.model))
    if run.example_stats is not None:
        extra.update(run.example_stats.finish(run.model, device, run_dir if ranks.is_main else None))
    if extra:
        record.best.setdefault("last", {}).update(extra)
        record.loggers.log({"step": record.step, **extra})
    agreement = dict(world_size=ranks.world_size, ranks_agree=ranks.parameters_agree(run.model)) if ranks.active else {}
    summary = record.write_summary(**agreement)
    record.loggers.close(summary)
    ranks.close()
    return summary


def run_steps(cfg, run, record, ranks, preemption):
    """Train from `record.step` to the last step, or until the batch loss is under `trainer.stop_at_train_loss`;
    logs, evaluates and checkpoints on the way, and hands over to the scheduler when preempted."""
    trainer = cfg.trainer
    progress = tqdm(total=run.total_steps, initial=record.step, disable=not (trainer.progress and ranks.is_main),
                    dynamic_ncols=True)
    while record.step < run.total_steps:
        started = time.perf_counter()
        record.last_loss = ranks.mean(train_step(run, record.step, ranks, trainer))
        if not math.isfinite(record.last_loss):  # record the divergence (a success-rate table counts it) and stop
            record.stopped = "non_finite_loss"
            record.write_summary()
            raise NonFiniteLossError(
                f"the loss is {record.last_loss} at step {record.step}; training stopped. Last good checkpoint: "
                f"{record.last_checkpoint or 'none written yet'}. Lower the learning rate or set trainer.grad_clip.")
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        record.train_time += time.perf_counter() - started
        record.step += 1
        step = record.step
        progress.update(1)
        if run.example_stats is not None and step % run.dataset.steps_per_epoch == 0:
            run.example_stats.check(run.model, run.device)  # after each epoch (forgetting events, harness/example_stats.py)
        if step % trainer.log_every == 0 or step == run.total_steps:
            lr = run.optimizer.param_groups[0]["lr"]
            record.loggers.log({"step": step, "train/loss": record.last_loss, "lr": lr})
            progress.set_postfix(loss=f"{record.last_loss:.4g}")
        target_reached = trainer.stop_at_train_loss is not None and record.last_loss < trainer.stop_at_train_loss
        if (trainer.eval_every and step % trainer.eval_every == 0) or step == run.total_steps or target_reached:
            metrics = evaluate(run.model, run.dataset, run.eval_loss_fn, run.device, run.autocast, run.micro_batches)
            if metrics:
                _update_best(record.best, metrics, step)
                record.loggers.log({"step": step, **metrics})
        if target_reached:
            record.stopped = "target_train_loss"
            break
        if preemption.received is not None:
            record.save_checkpoint()
            record.loggers.close()
            preemption.hand_over()
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < run.total_steps:
            record.last_checkpoint = record.save_checkpoint()
    progress.close()


class RunRecord:
    """Where a run stands (step, last loss, best metrics, training time) and what it writes down: checkpoints, the
    loggers' lines and summary.json. Built by resuming from the newest checkpoint of the run directory, if any."""

    def __init__(self, cfg, run, run_dir, ranks):
        self.cfg, self.run, self.run_dir, self.ranks = cfg, run, run_dir, ranks
        self.checkpoints = CheckpointManager(run_dir, cfg.checkpoint.keep)
        self.start_step, self.best, self.last_checkpoint = resume(cfg, run, self.checkpoints)
        self.step, self.stopped, self.last_loss, self.train_time = self.start_step, "max_steps", math.nan, 0.0
        self.loggers = Loggers(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), run_dir.name,
                               resume_step=self.start_step or None, enabled=ranks.is_main)

    def save_checkpoint(self):
        """Write a checkpoint at the current step (main rank only); returns its path, or None on other ranks."""
        if not self.ranks.is_main:
            return None
        run = self.run
        return self.checkpoints.save(self.step, {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "rng": rng_state(),
            "sample_generator": run.sample_generator.get_state(), "best": self.best,
            "example_stats": run.example_stats.state_dict() if run.example_stats is not None else None})

    def write_summary(self, **extra):
        """Write summary.json (main rank only) and return the summary dict."""
        seconds_per_step = self.train_time / max(self.step - self.start_step, 1)
        summary = {**make_summary(self.cfg, self.run, self.best, self.step, self.stopped, self.last_loss,
                                  seconds_per_step, self.run.device), **extra}
        if self.ranks.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


class RunParts:
    """Everything a run trains with, built from the config."""


def build_run(cfg, device):
    """Dataset, model, optimizer (through the protocol), schedule, loss and regularizer."""
    run, trainer = RunParts(), cfg.trainer
    run.dataset = build_dataset(cfg.dataset, DataPaths.from_config(cfg.data), cfg.seed)
    run.model = build_model(cfg.model, run.dataset.info).to(device)
    if trainer.init_from:  # another run's weights; a run that resumes continues from its own checkpoint instead
        try:
            run.model.load_state_dict(model_weights_from(trainer.init_from))
        except RuntimeError as error:
            raise ConfigError(f"trainer.init_from={trainer.init_from!r} does not fit model={cfg.model.name}: {error}") from error
    run.total_steps = total_steps_of(trainer, run.dataset)
    run.sample_generator = torch.Generator().manual_seed(cfg.seed + 104_729)

    def sample_batch(batch_size):
        # A stream of its own: training sees the same batches whatever an optimizer samples. The LLQR code's refit
        # takes consecutive batches off the training iterator instead (preconditioner.py,
        # _take_full_preconditioner_datapoint), which are then not trained on: one batch per refit at the presets'
        # precond batch = training batch, 0.1 % of the stream when refitting every 1,000 steps.
        inputs, targets = run.dataset.sample_batch(batch_size, run.sample_generator)
        return to_device(inputs, device), to_device(targets, device)

    # Training uses the dataset's label smoothing (dataset.label_smoothing; IWSLT14, ImageNet), through the closure,
    # so second-order optimizers differentiate the same loss (LLQR's refit too: it takes ε as label_smoothing);
    # evaluation reports the plain NLL and its perplexity.
    label_smoothing = float(getattr(run.dataset, "label_smoothing", 0.0))
    run.optimizer = build_optimizer(cfg.optimizer, run.model, run.dataset.loss, sample_batch, label_smoothing)
    run.schedule = Schedule(cfg.schedule, run.total_steps, run.dataset.steps_per_epoch)
    run.schedule.attach(run.optimizer)
    run.loss_fn = loss_function(run.dataset.loss, label_smoothing)
    run.eval_loss_fn = loss_function(run.dataset.loss)
    run.micro_batches = trainer.grad_accumulation
    if not isinstance(run.micro_batches, int) or run.micro_batches < 1:
        raise ConfigError(f"trainer.grad_accumulation={run.micro_batches} is invalid: it must be an integer >= 1")
    run.regularizer = l2_regularizer(trainer.l2, trainer.l2_randomized, trainer.l2_exclude_norm_and_bias)
    run.autocast = autocast_for(trainer.precision, device)
    run.forward_model = torch.compile(run.model) if trainer.compile else run.model
    run.device = device
    run.example_stats = ExampleStatistics(run.dataset) if trainer.example_stats else None
    if trainer.ddp_sync not in ("broadcast", "none"):
        raise ConfigError(f"trainer.ddp_sync={trainer.ddp_sync!r} is invalid; choose 'broadcast' or 'none'")
    return run


def resume(cfg, run, checkpoints):
    """Load the newest readable checkpoint of the run directory; returns (step, best, its path)."""
    if not cfg.checkpoint.resume:
        return 0, {}, None
    payload, path = checkpoints.load_latest()
    if payload is None:
        return 0, {}, None
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.sample_generator.set_state(payload["sample_generator"])
    set_rng_state(payload["rng"])
    if run.example_stats is not None:
        run.example_stats.load_state_dict(payload.get("example_stats"))
    print(f"resumed from {path} at step {payload['step']}")
    return payload["step"], payload["best"], path


def train_step(run, step, ranks, trainer):
    """One optimizer step on this rank's shard of the step's batch, in `trainer.grad_accumulation` micro-batches
    (the step's gradient is the shard's mean, as without accumulation); returns the shard's data loss."""
    run.schedule.apply(run.optimizer, step)
    run.model.train()
    inputs, targets = ranks.shard(to_device(run.dataset.train_batch(step), run.device))
    closure = LossClosure(run.forward_model, inputs, targets, run.loss_fn, run.regularizer, trainer.grad_clip,
                          run.autocast, after_backward=ranks.average_gradients if ranks.active else None,
                          micro_batches=run.micro_batches)
    closure.model = run.model
    run.optimizer.step(closure)
    if ranks.active and trainer.ddp_sync == "broadcast":
        ranks.broadcast_training_state(run.model, run.optimizer)
    return float(closure.data_loss)


def make_summary(cfg, run, best, step, stopped, last_loss, seconds_per_step, device):
    return {
        "model": cfg.model.name, "dataset": cfg.dataset.name, "optimizer": cfg.optimizer._target_,
        "choices": dict(cfg.get("choices") or {}), "experiment": cfg.get("experiment_name"), "seed": cfg.seed,
        "steps": step, "total_steps": run.total_steps, "stopped": stopped,
        "final": {"train/loss": last_loss, **best.get("last", {})},
        "best": {k: v for k, v in best.items() if k != "last"},
        "ms_per_step": 1000.0 * seconds_per_step, "peak_memory_mb": peak_memory_mb(device),
        **environment(device),
    }


def _update_best(best, metrics, step):
    """Track the last evaluation and, per metric, the best value and its step (min for losses, max otherwise)."""
    best["last"] = dict(metrics)
    for key, value in metrics.items():
        lower_is_better = key.endswith("loss") or key.endswith("perplexity")
        previous = best.get(key)
        if previous is None or (value < previous["value"] if lower_is_better else value > previous["value"]):
            best[key] = {"value": value, "step": step}
