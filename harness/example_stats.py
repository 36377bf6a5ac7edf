"""Per-example statistics of the training set: forgetting events, softmax entropy and margin (PSGD paper §5.4,
Tables 6, 7 and 10, after Toneva et al. 2019, "An Empirical Study of Example Forgetting during Deep Neural Network
Learning").

With `trainer.example_stats=true` the loop classifies every training example after each epoch and counts its
forgetting events: transitions from correctly classified to misclassified between two successive checks (Toneva
et al. §3). The paper does not say how it collected them; Toneva et al. read the predictions of each mini-batch
presentation, which an optimizer that runs its own forward passes (PSGD, K-FAC) keeps to itself, so here each check
is a pass over the unaugmented training set with the model in eval mode (our choice). At the end of the run the
final model's softmax entropy and margin p_y − max_{k≠y} p_k of every training example give Table 6's statistics,
their correlation with the forgetting scores Table 10's, and `example_stats.npz` in the run directory keeps every
per-example array; `dataset.forgetting_stats=<that file> dataset.keep_most_forgettable=N` then trains on the N most
forgettable examples (Table 7).
"""

import warnings
from pathlib import Path

import numpy as np
import torch

from harness.atomic import replace_from_temporary
from harness.errors import ConfigError, DataNotFoundError
from harness.metrics import log_softmax_batches

STATS_FILE = "example_stats.npz"


class ExampleStatistics:
    """Forgetting events of every training example, counted over checks made after each epoch, and the final
    per-example entropy and margin. Its state (four arrays of the training set's length) goes into checkpoints."""

    def __init__(self, dataset):
        inputs, targets = getattr(dataset, "train_x", None), getattr(dataset, "train_y", None)
        if inputs is None or targets is None or dataset.loss != "cross_entropy" or not dataset.steps_per_epoch:
            raise ConfigError(f"trainer.example_stats=true needs a classification dataset held in memory with epochs "
                              f"(cifar10, cifar100, mnist, digits); {type(dataset).__name__} is not one. "
                              "Set trainer.example_stats=false")
        self.inputs, self.targets, self.batch_size = inputs, targets, dataset.eval_batch_size
        n = len(targets)
        self.previous = torch.zeros(n, dtype=torch.bool)        # correct at the last check (none before the first)
        self.learned = torch.zeros(n, dtype=torch.bool)         # correct at some check
        self.forgetting_events = torch.zeros(n, dtype=torch.long)
        self.checks = 0

    def classify(self, model, device):
        """(correct, entropy, margin) of every training example under `model`, in float64 from the logits."""
        correct, entropy, margin = [], [], []
        for start, log_p in log_softmax_batches(model, self.inputs, device, self.batch_size):
            y = self.targets[start:start + len(log_p)].to(log_p.device)
            p = log_p.exp()
            correct.append((log_p.argmax(-1) == y).cpu())
            entropy.append(-(p * log_p).sum(-1).cpu())
            rival = p.scatter(-1, y[:, None], -1.0).amax(-1)    # the largest probability of a wrong class
            margin.append((p.gather(-1, y[:, None]).squeeze(-1) - rival).cpu())
        return torch.cat(correct), torch.cat(entropy), torch.cat(margin)

    def check(self, model, device):
        """Classify the training set and count the examples forgotten since the previous check."""
        correct = self.classify(model, device)[0]
        self.forgetting_events += self.previous & ~correct
        self.learned |= correct
        self.previous = correct
        self.checks += 1

    def forgetting_scores(self):
        """Forgetting events per example as floats, +inf for an example never classified correctly: Toneva et al.
        rank never-learned examples as the most forgettable."""
        scores = self.forgetting_events.double()
        scores[~self.learned] = float("inf")
        return scores

    def finish(self, model, device, run_dir=None):
        """The run's summary metrics (Tables 6 and 10); writes example_stats.npz into `run_dir` when given."""
        correct, entropy, margin = self.classify(model, device)
        scores = self.forgetting_scores()
        metrics = {"train/accuracy": float(correct.double().mean()), "forgetting/checks": self.checks,
                   "forgetting/never_learned": int((~self.learned).sum()),
                   "forgetting/unforgettable": int((self.learned & (self.forgetting_events == 0)).sum()),
                   **uncertainty_statistics(entropy, margin), **entropy_forgetting_correlations(entropy, scores)}
        if run_dir is not None:
            arrays = dict(forgetting=scores.numpy(), forgetting_events=self.forgetting_events.numpy(),
                          learned=self.learned.numpy(), entropy=entropy.numpy(), margin=margin.numpy(),
                          correct=correct.numpy(), checks=np.array(self.checks))

            def write(temporary):
                with open(temporary, "wb") as handle:
                    np.savez(handle, **arrays)

            replace_from_temporary(write, Path(run_dir) / STATS_FILE)
        return metrics

    def state_dict(self):
        return {"previous": self.previous, "learned": self.learned, "forgetting_events": self.forgetting_events,
                "checks": self.checks}

    def load_state_dict(self, state):
        if state is None:
            raise ConfigError("this run's checkpoint was written without trainer.example_stats, so the forgetting "
                              "events of the steps before it are unknown; start a new run directory")
        if len(state["learned"]) != len(self.targets):
            raise ConfigError(f"the checkpoint's example statistics cover {len(state['learned'])} training examples, "
                              f"the dataset has {len(self.targets)}; start a new run directory")
        self.previous, self.learned = state["previous"].clone(), state["learned"].clone()
        self.forgetting_events, self.checks = state["forgetting_events"].clone(), int(state["checks"])


def uncertainty_statistics(entropy, margin):
    """Min, mean and max over examples of the softmax entropy (nats) and the margin (PSGD paper Table 6)."""
    out = {}
    for name, values in (("entropy", entropy), ("margin", margin)):
        out.update({f"train/{name}_min": float(values.min()), f"train/{name}_mean": float(values.mean()),
                    f"train/{name}_max": float(values.max())})
    return out


def entropy_forgetting_correlations(entropy, scores):
    """Spearman, Pearson, Kendall and weighted Kendall correlations of entropy with the forgetting score, with
    p-values (PSGD paper Table 10; scipy.stats; weighted tau has no p-value). Never-learned examples (+inf) take
    one more than the largest finite score, so they rank as the most forgettable and Pearson stays finite."""
    from scipy import stats

    scores = scores.clone()
    finite = torch.isfinite(scores)
    scores[~finite] = (scores[finite].max() + 1.0) if finite.any() else 0.0
    x, y = entropy.numpy(), scores.numpy()
    out = {}
    with warnings.catch_warnings():  # a constant input (e.g. a single check) gives nan, which is what we record
        warnings.simplefilter("ignore")
        for name, test in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr), ("kendall_tau", stats.kendalltau)):
            result = test(x, y)
            out[f"forgetting/{name}"], out[f"forgetting/{name}_p"] = float(result.statistic), float(result.pvalue)
        out["forgetting/weighted_tau"] = float(stats.weightedtau(x, y).statistic)
    return out


def most_forgettable(path, keep, train_size):
    """Sorted indices of the `keep` training examples with the highest forgetting scores in an example_stats.npz
    (never-learned first, ties by index), for training on a pruned set (PSGD paper Table 7)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"dataset.forgetting_stats={str(path)!r} does not exist; train with "
                                f"trainer.example_stats=true and point it at that run's {STATS_FILE}")
    with np.load(path) as stored:
        if "forgetting" not in stored:
            raise ValueError(f"{path} has no forgetting array (not written by trainer.example_stats?)")
        scores = torch.as_tensor(stored["forgetting"])
    if len(scores) != train_size:
        raise ValueError(f"{path} scores {len(scores)} training examples, the dataset has {train_size}: "
                         "it was written for another dataset")
    if not 0 < keep <= train_size:
        raise ValueError(f"dataset.keep_most_forgettable={keep} must be between 1 and the {train_size} training examples")
    order = torch.argsort(-scores, stable=True)
    return order[:keep].sort().values
