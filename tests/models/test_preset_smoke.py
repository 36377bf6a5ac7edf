"""Every experiment preset (configs/experiment/*.yaml, found by glob) trains 1–2 optimizer steps through train.py's
code path with its real model, optimizer and schedule (issue 8: "a smoke run of each preset so the configs are known
to work"). Only what a CPU and CI time need is reduced (the REDUCED table below); the run must finish, write
summary.json with a finite training loss, and keep the preset's model, optimizer and schedule sections unchanged.

Data: MNIST, PTB and Shakespeare come from the offline mirror; CIFAR and ImageNet are synthetic stand-ins in their
real file formats (tests/data/synthetic_files.py); OpenWebText is a memmap written by scripts/prepare_openwebtext.py;
IWSLT14 is the mirror's first lines prepared as `dataset.train_from=valid` does (harness.data.iwslt_prepare)."""

import json
import math

import pytest
from omegaconf import OmegaConf

from tests.conftest import SHARED_DATA
from tests.data.synthetic_files import write_cifar_folder, write_image_folder, write_ntga_folder
from tests.harness.helpers import CONFIGS, compose_config, run

PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
MIRRORED = {"mnist", "ptb", "shakespeare_char", "iwslt14_de_en"}  # datasets read from the offline mirror
IWSLT_LINES = 120  # mirror lines kept per split for the IWSLT stand-in (every 23rd valid line is held out: 5)

# Every run: no checkpoint at the end (helpers.SMALL already turns off the periodic ones). Supervised presets also get
# trainer.max_steps=2 unless their row says otherwise; PPO presets get one 64-step rollout.
SUPERVISED = {"trainer.max_steps": 2, "checkpoint.at_end": False}
PPO = {"task.total_timesteps": 64, "task.rollout_steps": 64, "checkpoint.at_end": False}

# What each preset gives up to fit a CPU and CI time; model sizes, optimizers and schedules are never touched.
# batch_size: the preset's batch (64–480 sequences, 128–256 images) cut to 2; eval_*: the held-out evaluation
# (always run at the end) cut to the smallest the dataset allows; max_steps 1 where one step already costs seconds.
REDUCED = {
    "demo_xor": ["dataset.eval_size=16"],
    "e3_logistic_mnist": ["dataset.batch_size=2"],  # 614,656 outer-product features per image; MNIST's 10k test set stays
    "e5_xor_rank": ["dataset.eval_size=16"],
    "forgetting_resnet18_cifar10": ["dataset.batch_size=2"],  # + per-example statistics of the 200 stand-in images
    # stage 2 of Fig. 2a starts from a stage-1 run that a smoke test does not have (init_from: tests/harness/test_resume.py)
    "fig2a_from_psgd_noisy": ["dataset.batch_size=2", "trainer.init_from=null"],
    "fig2a_from_sgd_noisy": ["dataset.batch_size=2", "trainer.init_from=null"],
    "fig2a_noisy_to_clean_cifar10": ["dataset.batch_size=2"],
    "fig6_logistic_mnist_bernoulli": ["dataset.batch_size=2"],  # as e3_logistic_mnist
    "grokking": [],  # p = 97, batch 512 of 4 tokens: already small
    "imagenet_resnet50": ["dataset.batch_size=2", "dataset.max_eval_images=2", "dataset.workers=1", "trainer.max_steps=1"],
    # + dataset.data_dir: the mirror's first lines prepared with a 1k BPE (dataset.train_from=valid on the whole mirror
    # took 50 s here, mostly evaluating the full model on its 316 held-out sentences: no eval-size key for IWSLT);
    # max_tokens 16384 -> 256 (one step = one such batch), BLEU of 1 sentence with hypotheses of at most 4 tokens
    "iwslt14_transformer": ["dataset.max_tokens=256", "dataset.bleu_max_sentences=1", "dataset.max_len_a=0",
                            "dataset.max_len_b=4", "trainer.max_steps=1"],
    "lenet5_digits": [],
    "llqr_resnet18_cifar10": ["dataset.batch_size=2"],
    "llqr_resnet18_cifar100_adamw": ["dataset.batch_size=2"],
    "llqr_vgg16_bn_cifar10": ["dataset.batch_size=2"],
    "llqr_wide_resnet28_10_cifar10": ["dataset.batch_size=2", "trainer.max_steps=1"],
    # 480 sequences of 1024 in 40 micro-batches -> 2 sequences of 64 tokens in one (model.block_size stays 1024);
    # fp32, since bf16 autocast makes one GPT-2 124M step ~100 s on a CPU (table5_owt_50m covers the bf16 path)
    "owt_gpt2": ["dataset.batch_size=2", "dataset.block_size=64", "dataset.eval_iters=1", "trainer.grad_accumulation=1",
                 "trainer.max_steps=1", "trainer.precision=fp32"],
    "ppo_pendulum": [],
    "fig1_ppo_halfcheetah": [],
    "fig1_ppo_walker2d": [],
    "ptb_lstm1": ["dataset.batch_size=2", "dataset.eval_batch_size=1", "dataset.eval_windows=1"],
    "ptb_lstm2": ["dataset.batch_size=2", "dataset.eval_batch_size=1", "dataset.eval_windows=1", "trainer.max_steps=1"],
    "ptb_lstm3": ["dataset.batch_size=2", "dataset.eval_batch_size=1", "dataset.eval_windows=1", "trainer.max_steps=1"],
    "shakespeare_char": ["dataset.batch_size=2", "dataset.eval_iters=1"],
    "table1_lenet5_mnist": [],
    "table2_resnet18_cifar10": ["dataset.batch_size=2"],
    "table2_resnet18rf_cifar10": ["dataset.batch_size=2"],
    "table3_cifar10_blur_deficit": ["dataset.batch_size=2"],
    "table3_cifar10_class_imbalance": ["dataset.batch_size=2"],
    "table3_cifar10_noisy_labels": ["dataset.batch_size=2"],
    "table3_cifar10_ntga": ["dataset.batch_size=2"],
    "table5_owt_50m": ["dataset.batch_size=2", "dataset.eval_iters=1", "trainer.max_steps=1"],  # bf16 kept: ~10 s a step on CPU
    "table5_shakespeare_char": ["dataset.batch_size=2", "dataset.eval_iters=1"],
    "table8_xor_lstm": ["dataset.eval_size=16"],
    "table8_xor_rnn": ["dataset.eval_size=16"],
}
SLOW = set()  # presets whose one step costs more than ~15 s on one CPU thread (none with the reductions above)


def overrides_for(name, preset):
    """The preset, the common reductions, then its own row (a key in both takes the row's value)."""
    common = PPO if preset.task.name == "ppo" else SUPERVISED
    merged = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in common.items()}
    merged.update(item.split("=", 1) for item in REDUCED.get(name, []))
    return [f"experiment={name}", *(f"{key}={value}" for key, value in merged.items())]


def write_iwslt_stand_in(folder, tmp_path):
    """The mirror's first IWSLT_LINES lines of valid/test, prepared as dataset.train_from=valid prepares the mirror."""
    from harness.data.iwslt_prepare import prepare

    source = tmp_path / "iwslt_source"
    source.mkdir()
    for name in ("valid.de", "valid.en", "test.de", "test.en"):
        lines = (SHARED_DATA / "iwslt14_de_en" / name).read_text(encoding="utf-8").splitlines()[:IWSLT_LINES]
        (source / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(folder, tokenized=source, train_from="valid", bpe_merges=1000)
    return [f"dataset.data_dir={folder}"]


def make_data(dataset, data_root, tmp_path):
    """Write the files the preset's dataset reads (synthetic stand-ins); returns extra overrides (data locations)."""
    name = dataset.name
    if name == "cifar_ntga":
        write_ntga_folder(data_root / dataset.folder)
    elif name in ("cifar10", "cifar100") or name.startswith("cifar_"):
        classes = int(dataset.get("classes") or name[len("cifar"):])
        write_cifar_folder(data_root, classes=classes, per_class=20 if classes == 10 else 2, test_per_class=1)
    elif name == "imagenet":
        write_image_folder(data_root / "imagenet", per_class=2)
    elif name == "openwebtext":
        from scripts.prepare_openwebtext import prepare
        from tests.data.test_openwebtext import byte_encoding, write_corpus

        prepare(write_corpus(tmp_path / "corpus"), data_root / "openwebtext", byte_encoding(), val_fraction=0.2)
    elif name == "iwslt14_de_en":
        return write_iwslt_stand_in(data_root / "iwslt_stand_in", tmp_path)
    return []


def test_every_row_names_a_preset():
    """A renamed or deleted preset must not leave a stale row behind (a new preset runs with the common reductions)."""
    assert set(REDUCED) <= set(PRESETS), sorted(set(REDUCED) - set(PRESETS))
    assert SLOW <= set(PRESETS), sorted(SLOW - set(PRESETS))


def _params():
    for name in PRESETS:
        yield pytest.param(name, id=name, marks=[pytest.mark.slow] if name in SLOW else [])


@pytest.mark.parametrize("name", list(_params()))
def test_preset_trains_a_step_at_full_model_size(tmp_path, data_root, name):
    preset = compose_config([f"experiment={name}"])
    if preset.task.name == "supervised" and preset.dataset.name in MIRRORED and not SHARED_DATA.is_dir():
        pytest.skip(f"{preset.dataset.name} is read from the offline mirror (../shared/data), which is not here")
    extra = make_data(preset.dataset, data_root, tmp_path) if preset.task.name == "supervised" else []
    overrides = [*overrides_for(name, preset), *extra]
    run(overrides, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["experiment"] == preset.experiment_name
    if preset.task.name == "ppo":
        assert on_disk["steps"] == 64 and on_disk["rollouts"] == 1
        losses = [on_disk["final"]["train/actor_loss"], on_disk["final"]["train/value_loss"]]
    else:
        assert on_disk["steps"] == on_disk["total_steps"] >= 1 and on_disk["stopped"] == "max_steps"
        losses = [on_disk["final"]["train/loss"]]
        assert "val/loss" in on_disk["final"] and math.isfinite(on_disk["final"]["val/loss"])
    assert all(math.isfinite(loss) for loss in losses), on_disk["final"]
    resolved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    for section in ("model", "optimizer", "schedule"):
        assert resolved[section] == OmegaConf.to_container(preset[section], resolve=True), section
    if preset.task.name == "ppo":
        assert resolved.task.hidden == list(preset.task.hidden) and resolved.task.env_id == preset.task.env_id
