"""Held-out evaluation: the mean loss and the metrics a dataset declares (accuracy, perplexity)."""

import math

import torch

from harness.data.base import to_device


@torch.no_grad()
def evaluate(model, dataset, loss_fn, device, autocast=None):
    """Mean loss (weighted by batch size) and the dataset's metrics over its held-out split; {} if none."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for inputs, targets in dataset.eval_batches():
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        if autocast is not None:
            with autocast():
                outputs = model(inputs).float()
        else:
            outputs = model(inputs)
        n = targets.numel()
        total_loss += float(loss_fn(outputs, targets)) * n
        if "accuracy" in dataset.metrics:
            correct += int((outputs.argmax(-1) == targets).sum())
        if "sign_accuracy" in dataset.metrics:
            correct += int(((outputs > 0) == (targets > 0.5)).sum())
        count += n
    model.train()
    if count == 0:
        return {}
    metrics = {"val/loss": total_loss / count}
    if "accuracy" in dataset.metrics or "sign_accuracy" in dataset.metrics:
        metrics["val/accuracy"] = correct / count
    if "perplexity" in dataset.metrics:
        metrics["val/perplexity"] = math.exp(min(metrics["val/loss"], 50.0))
    return metrics


def final_metrics(model, dataset, device):
    """Metrics a dataset computes only at the end of a run (for example BLEU with beam search):
    its optional `final_metrics(model, device) -> dict` method."""
    extra = getattr(dataset, "final_metrics", None)
    return extra(model, device) if extra is not None else {}
