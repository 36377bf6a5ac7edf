"""Label smoothing, token-weighted evaluation, gradient accumulation and nanoGPT's weight-decay groups,
each against a hand computation or an independent formula."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness.data.base import ArrayDataset
from harness.distributed import Distributed
from harness.errors import ConfigError
from harness.loop import build_run, train_step
from harness.metrics import evaluate
from harness.models.nanogpt import GPT
from harness.protocol import IGNORE_INDEX, LossClosure, build_optimizer, loss_function, parameter_groups
from tests.harness.helpers import compose_config, run


def padded_tokens(batch=5, length=4, vocab=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator)
    targets = torch.randint(vocab, (batch, length), generator=generator)
    targets[0, 2:] = IGNORE_INDEX
    targets[3, 1:] = IGNORE_INDEX
    return logits, targets


# ----- label smoothing -------------------------------------------------------------------------------------------
def test_label_smoothing_is_the_smoothed_target_cross_entropy_over_real_tokens():
    logits, targets = padded_tokens()
    eps, vocab = 0.1, logits.shape[-1]
    keep = targets != IGNORE_INDEX
    log_p = logits.log_softmax(-1)[keep]
    nll = -log_p.gather(1, targets[keep][:, None]).squeeze(1)
    uniform = -log_p.sum(1)  # Σ_c −log p_c
    torch_form = ((1 - eps) * nll + eps / vocab * uniform).mean()
    assert torch.allclose(loss_function("cross_entropy", eps)(logits, targets), torch_form, atol=1e-6)
    assert torch.allclose(loss_function("cross_entropy")(logits, targets), nll.mean(), atol=1e-6)
    # fairseq's label_smoothed_nll_loss: (1 − ε − ε/(V−1))·nll + ε/(V−1)·Σ_c −log p_c; the gap is as documented
    fairseq_form = ((1 - eps - eps / (vocab - 1)) * nll + eps / (vocab - 1) * uniform).mean()
    gap = (eps / (vocab - 1) * (uniform / vocab - nll)).mean()
    assert torch.allclose(fairseq_form - torch_form, gap, atol=1e-6)


def test_label_smoothing_errors():
    with pytest.raises(ConfigError, match=r"dataset.label_smoothing=1.0 is invalid: it must be in \[0, 1\)"):
        loss_function("cross_entropy", 1.0)
    with pytest.raises(ConfigError, match="applies to cross-entropy only, not to 'mse'"):
        loss_function("mse", 0.1)


class ClosureProbe(torch.optim.Optimizer):
    """Records what a second-order optimizer would differentiate: closure(backward=False)."""

    def __init__(self, params, lr=0.0):
        super().__init__(params, {"lr": lr})
        self.seen = []

    def step(self, closure):
        self.seen.append((closure(backward=False).detach(), closure.inputs, closure.targets))


def test_loop_trains_on_the_smoothed_loss_and_evaluates_the_plain_one(monkeypatch):
    monkeypatch.setattr(ArrayDataset, "label_smoothing", 0.2, raising=False)
    cfg = compose_config(["model=mlp", "dataset=digits", "trainer.max_steps=1", "trainer.device=cpu"])
    torch.manual_seed(0)
    run_parts = build_run(cfg, torch.device("cpu"))
    with torch.no_grad():  # confident predictions: near-uniform ones make smoothed and plain losses almost equal
        for p in run_parts.model.parameters():
            p.mul_(5.0)
    run_parts.optimizer = ClosureProbe(run_parts.model.parameters())
    run_parts.schedule.attach(run_parts.optimizer)
    train_step(run_parts, 0, Distributed(), cfg.trainer)
    loss, inputs, targets = run_parts.optimizer.seen[0]
    with torch.no_grad():
        logits = run_parts.model(inputs)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, label_smoothing=0.2), atol=1e-6)
    assert not torch.allclose(loss, F.cross_entropy(logits, targets), atol=1e-3)
    assert torch.allclose(run_parts.eval_loss_fn(logits, targets), F.cross_entropy(logits, targets))


# ----- token-weighted evaluation ----------------------------------------------------------------------------------
class ConstantLogits(torch.nn.Module):
    """Logits (ln 3, 0) at every position: p = (3/4, 1/4), argmax class 0."""

    def forward(self, x):
        return torch.tensor([math.log(3.0), 0.0]).expand(*x.shape, 2)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_evaluate_counts_only_real_tokens(micro_batches):
    pad = IGNORE_INDEX
    batches = [(torch.zeros(1, 3), torch.tensor([[0, 0, pad]])),
               (torch.zeros(2, 3), torch.tensor([[1, pad, pad], [pad, pad, pad]]))]
    dataset = SimpleNamespace(metrics=("accuracy", "perplexity"), eval_batches=lambda: iter(batches))
    metrics = evaluate(ConstantLogits(), dataset, loss_function("cross_entropy"), torch.device("cpu"),
                       micro_batches=micro_batches)
    # three real tokens: two of class 0 (−ln 3/4 each, right), one of class 1 (−ln 1/4, wrong)
    expected = (2 * math.log(4 / 3) + math.log(4)) / 3
    assert metrics["val/loss"] == pytest.approx(expected)
    assert metrics["val/accuracy"] == pytest.approx(2 / 3)
    assert metrics["val/perplexity"] == pytest.approx(math.exp(expected))


# ----- gradient accumulation --------------------------------------------------------------------------------------
class TinyLM(torch.nn.Module):
    def __init__(self, vocab=7, width=5):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)))


@pytest.mark.parametrize("k", [2, 3])
def test_accumulated_micro_batches_equal_one_batch_with_sgd(k):
    torch.manual_seed(0)
    whole, split = TinyLM(), TinyLM()
    split.load_state_dict(whole.state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in (whole, split)]
    loss_fn = loss_function("cross_entropy", 0.1)
    for step in range(4):
        _, targets = padded_tokens(batch=6, seed=step)  # padded rows make the micro-batches' token counts differ
        inputs = torch.randint(7, targets.shape, generator=torch.Generator().manual_seed(100 + step))
        closures = [LossClosure(whole, inputs, targets, loss_fn, grad_clip=1.0),
                    LossClosure(split, inputs, targets, loss_fn, grad_clip=1.0, micro_batches=k)]
        for optimizer, closure in zip(optimizers, closures):
            optimizer.step(closure)
        assert torch.allclose(closures[0].data_loss, closures[1].data_loss, atol=1e-6)
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_accumulation_refuses_closures_without_backward():
    closure = LossClosure(TinyLM(), torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long),
                          loss_function("cross_entropy"), micro_batches=2)
    with pytest.raises(ConfigError, match=r"trainer.grad_accumulation=2 cannot be used with this optimizer.*"
                                          r"Set trainer.grad_accumulation=1"):
        closure(backward=False)
    with pytest.raises(ConfigError, match="trainer.grad_accumulation=5 is more than the 4 samples"):
        LossClosure(TinyLM(), torch.zeros(4, 3, dtype=torch.long), None, loss_function("objective"), micro_batches=5)


def final_parameters(run_dir):
    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(newest, weights_only=True)["model"]


# Shampoo with epsilon 1e-3: at 1e-12 the root inverse of its rank-deficient factors (a few steps of Σ ggᵀ) magnifies
# float rounding differences of the gradients (~1e-8) into 1e-3 differences of the parameters.
@pytest.mark.parametrize("optimizer", [["optimizer=sgd"], ["optimizer=kfac"],
                                       ["optimizer=shampoo", "optimizer.precondition_frequency=2", "optimizer.epsilon=1e-3"]])
def test_loop_accumulation_matches_one_batch(tmp_path, optimizer):
    """K-FAC and Shampoo step on the accumulated .grad (K-FAC's factors sum over the micro-batches' hooks)."""
    task = ["model=mlp", "dataset=digits", "dataset.batch_size=24", "trainer.max_steps=5", "trainer.l2=0.01",
            "trainer.grad_clip=1.0", *optimizer]
    _, whole = run(task, tmp_path / "whole")
    _, split = run([*task, "trainer.grad_accumulation=3"], tmp_path / "split")
    a, b = final_parameters(tmp_path / "whole"), final_parameters(tmp_path / "split")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    assert whole["final"]["val/loss"] == pytest.approx(split["final"]["val/loss"], rel=1e-5)


def test_loop_accumulation_errors(tmp_path):
    with pytest.raises(ConfigError, match="trainer.grad_accumulation=0 is invalid"):
        run(["model=mlp", "dataset=digits", "trainer.max_steps=1", "trainer.grad_accumulation=0"], tmp_path / "a")
    with pytest.raises(ConfigError, match="trainer.grad_accumulation=2 cannot be used"):
        run(["model=mlp", "dataset=digits", "trainer.max_steps=1", "optimizer=psgd_xmat", "trainer.grad_accumulation=2"],
            tmp_path / "b")


# ----- weight decay on matrices / Linear weights (nanoGPT's configure_optimizers) ---------------------------------
def names_of(model, params):
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tie", [True, False])
def test_decay_groups(tie):
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True, tie_weights=tie)
    linear = {"h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight", "h.0.mlp.c_fc.weight",
              "h.0.mlp.c_proj.weight"}
    embeddings = {"wte.weight", "wpe.weight"} | (set() if tie else {"lm_head.weight"})
    everything = {name for name, _ in model.named_parameters()}
    assert linear <= everything and embeddings <= everything
    matrices = parameter_groups(model, "matrices", 0.1)
    assert [g["weight_decay"] for g in matrices] == [0.1, 0.0]
    assert names_of(model, matrices[0]["params"]) == linear | embeddings
    assert names_of(model, matrices[1]["params"]) == everything - linear - embeddings  # biases and LayerNorms
    linear_only = parameter_groups(model, "linear_weights", 0.1)
    assert names_of(model, linear_only[0]["params"]) == linear | (set() if tie else {"lm_head.weight"})
    assert names_of(model, linear_only[0]["params"] + linear_only[1]["params"]) == everything


def test_adamw_decays_only_the_first_group():
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True)
    cfg = {"_target_": "torch.optim.AdamW", "lr": 0.1, "weight_decay": 0.5, "weight_decay_on": "matrices"}
    optimizer = build_optimizer(cfg, model, "cross_entropy", None)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own update is 0: only the decoupled decay moves a parameter
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.ndim >= 2 else 1.0
        assert torch.allclose(p, before[name] * factor), name


def test_decay_option_errors():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match=r"optimizer.weight_decay_on='2d' is invalid; choose one of \['all', 'matrices'"):
        build_optimizer({"_target_": "torch.optim.AdamW", "weight_decay_on": "2d"}, model, "cross_entropy", None)
    with pytest.raises(ConfigError, match="weight_decay_on='matrices' needs an optimizer config with a weight_decay key"):
        build_optimizer({"_target_": "torch.optim.Adagrad", "weight_decay_on": "matrices"}, model, "cross_entropy", None)


def test_nanogpt_presets_declare_their_source_decay():
    expected = {"shakespeare_char": "matrices", "owt_gpt2": "matrices", "table5_shakespeare_char": "linear_weights",
                "table5_owt_50m": "linear_weights"}
    for preset, decay_on in expected.items():
        assert compose_config([f"experiment={preset}"]).optimizer.weight_decay_on == decay_on
    owt = compose_config(["experiment=owt_gpt2"])
    assert owt.dataset.batch_size // owt.trainer.grad_accumulation == 12  # nanoGPT's micro-batch, 40 of them
