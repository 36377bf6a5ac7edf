"""A 30-step AdamW run for every (model, dataset) pairing the papers use, at tiny sizes, through train.py's path:
the training loss goes down. Text data come from the offline mirror; CIFAR and ImageNet are synthetic stand-ins in
their real file formats; OpenWebText is a memmap written by scripts/prepare_openwebtext.py. ResNet-50 is checked by
a forward/backward test only: 30 steps on 3 synthetic classes of 32×32 images neither fit the time budget nor
lower its loss reliably (BatchNorm at batch 9), so the ImageFolder pipeline is smoke-tested with ResNet-18."""

import json

import pytest

from tests.conftest import SHARED_DATA
from tests.data.synthetic_files import write_cifar_folder, write_image_folder
from tests.harness.helpers import run

STEPS = 30
needs_mirror = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the offline mirror (../shared/data) is not here")

TINY_RESNET = ["model=resnet18", "model.width=4"]
CIFAR_SMALL = ["dataset.batch_size=16"]

# (id, overrides, AdamW lr, what the data needs: "mirror", "cifar10", "cifar100", "imagefolder", "owt" or None)
PAIRINGS = [
    ("nanogpt-shakespeare", ["model=nanogpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.dropout=0.0",
                             "dataset=shakespeare_char", "dataset.block_size=32", "dataset.batch_size=8", "dataset.eval_iters=2"], 3e-3, "mirror"),
    ("lstm-ptb", ["model=lstm_lm_small", "model.emb_size=32", "model.hidden_size=32", "dataset=ptb", "dataset.bptt=12",
                  "dataset.batch_size=8", "dataset.eval_split=test", "dataset.eval_windows=2"], 1e-2, "mirror"),
    ("transformer-iwslt", ["model=transformer_iwslt_de_en", "model.dim=32", "model.ffn=64", "model.heads=2", "model.encoder_layers=1",
                           "model.decoder_layers=1", "model.dropout=0.0", "dataset=iwslt14_de_en", "dataset.train_from=valid",
                           "dataset.bpe_merges=600", "dataset.max_tokens=600", "dataset.bleu_max_sentences=2", "dataset.max_len_b=4",
                           "dataset.bleu_split=valid"], 3e-3, "mirror"),
    ("grokking-modular", ["model=grokking_transformer", "model.width=32", "model.head_dim=8", "model.mlp_dim=64",
                          "dataset=modular_arithmetic", "dataset.p=11", "dataset.batch_size=32"], 3e-3, None),
    ("resnet18-cifar10", [*TINY_RESNET, "dataset=cifar10", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("resnet18rf-cifar10", [*TINY_RESNET, "model.shortcut=false", "model.activation=soft_lrelu", "dataset=cifar10", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("resnet18-cifar100", [*TINY_RESNET, "dataset=cifar100", *CIFAR_SMALL], 3e-3, "cifar100"),
    ("resnet18-imbalance", [*TINY_RESNET, "dataset=cifar10_class_imbalance", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("resnet18-noisy", [*TINY_RESNET, "dataset=cifar10_noisy_labels", "dataset.noise_rate=0.2", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("resnet18-blur", [*TINY_RESNET, "dataset=cifar10_blur_deficit", "dataset.blur_epochs=1", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("vgg16bn-cifar10", ["model=vgg16_bn", "model.width=8", "model.hidden=16", "model.dropout=0.0", "dataset=cifar10", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("wrn-cifar10lt", ["model=wide_resnet28_10", "model.depth=10", "model.widen_factor=1", "dataset=cifar10_lt",
                       "dataset.imbalance_ratio=2", *CIFAR_SMALL], 3e-3, "cifar10"),
    ("resnet18-imagefolder", [*TINY_RESNET, "dataset=imagenet", "dataset.image_size=32", "dataset.batch_size=9",
                              "dataset.workers=1"], 3e-3, "imagefolder"),
    pytest.param(["model=vit_s16", "dataset=imagenet", "dataset.image_size=32", "dataset.batch_size=9", "dataset.workers=2"],
                 1e-4, "imagefolder", id="vit_s16-imagenet", marks=pytest.mark.slow),
    ("nanogpt-openwebtext", ["model=nanogpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.dropout=0.0",
                             "dataset=openwebtext", "dataset.block_size=16", "dataset.batch_size=8", "dataset.eval_iters=2",
                             "dataset.vocab_size=257"], 3e-3, "owt"),
]


def train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def make_data(kind, data_root, tmp_path):
    """Write the synthetic files a pairing needs; returns extra overrides."""
    if kind in ("cifar10", "cifar100"):
        write_cifar_folder(data_root, classes=10 if kind == "cifar10" else 100, per_class=20 if kind == "cifar10" else 2)
    elif kind == "imagefolder":
        write_image_folder(data_root / "imagenet", per_class=9)
    elif kind == "owt":
        from tests.data.test_openwebtext import byte_encoding, write_corpus
        from scripts.prepare_openwebtext import prepare

        prepare(write_corpus(tmp_path / "corpus"), data_root / "openwebtext", byte_encoding(), val_fraction=0.2)
    return []


def _params():
    for case in PAIRINGS:
        if hasattr(case, "marks"):
            yield case  # already a pytest.param (slow ones)
            continue
        name, overrides, lr, data = case
        yield pytest.param(overrides, lr, data, id=name, marks=needs_mirror if data == "mirror" else ())


@pytest.mark.parametrize("overrides,lr,data", list(_params()))
def test_thirty_adamw_steps_lower_the_loss(tmp_path, data_root, overrides, lr, data):
    run_dir = tmp_path / "run"
    extra = make_data(data, data_root, tmp_path)
    _, summary = run([*overrides, *extra, "optimizer=adamw", f"optimizer.lr={lr}", "optimizer.weight_decay=0.0",
                      "schedule=constant", f"trainer.max_steps={STEPS}", "checkpoint.at_end=false"], run_dir)
    losses = train_losses(run_dir)
    assert len(losses) == STEPS
    window = 6
    assert sum(losses[-window:]) / window < 0.97 * sum(losses[:window]) / window, losses
    assert "val/loss" in summary["final"]
    if data == "mirror" and "dataset=iwslt14_de_en" in overrides:
        assert {"valid/bleu_tokenized_fairseq", "valid/sacrebleu_detokenized"} <= set(summary["final"])
