"""Held-out evaluation: the mean loss and the metrics a dataset declares (accuracy, perplexity)."""

import math

import torch

from harness.data.base import to_device
from harness.protocol import IGNORE_INDEX, leading_size, split_batch


@torch.no_grad()
def evaluate(model, dataset, loss_fn, device, autocast=None, micro_batches=1):
    """Mean loss and the dataset's metrics over its held-out split; {} if none. Batches weigh by their counted
    targets: integer targets equal to IGNORE_INDEX (padding) count neither in the loss nor in the accuracy, so
    both are means over real tokens (fairseq's token-weighted valid loss); float targets count every entry.
    The loop passes the plain loss (no label smoothing): val/loss is the NLL and val/perplexity its exp.
    `micro_batches` (trainer.grad_accumulation) runs each batch in that many pieces, as training does: same sums."""
    model.eval()
    totals = {"loss": 0.0, "correct": 0, "count": 0}
    for inputs, targets in dataset.eval_batches():
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        k = min(micro_batches, leading_size(inputs))
        for piece_inputs, piece_targets in zip(split_batch(inputs, k), split_batch(targets, k)):
            if autocast is not None:
                with autocast():
                    outputs = model(piece_inputs).float()
            else:
                outputs = model(piece_inputs)
            _add_batch(totals, outputs, piece_targets, loss_fn, dataset.metrics)
    model.train()
    if totals["count"] == 0:
        return {}
    metrics = {"val/loss": totals["loss"] / totals["count"]}
    if "accuracy" in dataset.metrics or "sign_accuracy" in dataset.metrics:
        metrics["val/accuracy"] = totals["correct"] / totals["count"]
    if "perplexity" in dataset.metrics:
        metrics["val/perplexity"] = math.exp(min(metrics["val/loss"], 50.0))
    return metrics


def _add_batch(totals, outputs, targets, loss_fn, metrics):
    """Add a batch's summed loss, correct predictions and counted targets to `totals`."""
    counted = None if targets.is_floating_point() else targets != IGNORE_INDEX
    n = targets.numel() if counted is None else int(counted.sum())
    if n == 0:
        return
    totals["loss"] += float(loss_fn(outputs, targets)) * n
    if "accuracy" in metrics:
        hits = outputs.argmax(-1) == targets
        totals["correct"] += int((hits if counted is None else hits & counted).sum())
    if "sign_accuracy" in metrics:
        totals["correct"] += int(((outputs > 0) == (targets > 0.5)).sum())
    totals["count"] += n


def final_metrics(model, dataset, device):
    """Metrics a dataset computes only at the end of a run (for example BLEU with beam search):
    its optional `final_metrics(model, device) -> dict` method."""
    extra = getattr(dataset, "final_metrics", None)
    return extra(model, device) if extra is not None else {}


@torch.no_grad()
def log_softmax_batches(model, inputs, device, batch_size=1024):
    """(start, log-softmax of the model's outputs on inputs[start:start + batch_size]) over all inputs, in eval mode,
    in float64 from the logits so that the very small entropies of confident predictions (1e-16 and below, PSGD
    paper Table 11) are not rounded to 0. The model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            yield start, model(to_device(inputs[start:start + batch_size], device)).double().log_softmax(-1)
    finally:
        model.train(was_training)


def prediction_entropy(model, inputs, device, batch_size=1024):
    """Entropy (nats) of the model's softmax on each input, −Σ p log p (float64)."""
    return torch.cat([-(log_p.exp() * log_p).sum(-1).cpu()
                      for _, log_p in log_softmax_batches(model, inputs, device, batch_size)])


class DistanceFromInit:
    """‖θ − θ₀‖₂ over all parameters (PSGD paper Table 11, after Cao & Gu 2019). θ₀ is copied when the run's model
    is built (seeded, before any checkpoint is loaded), so a resumed run measures from the same θ₀."""

    def __init__(self, model):
        self.initial = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def __call__(self, model):
        squares = sum(float((p.detach() - p0).double().pow(2).sum()) for p, p0 in zip(model.parameters(), self.initial))
        return {"distance_from_init": math.sqrt(squares)}
