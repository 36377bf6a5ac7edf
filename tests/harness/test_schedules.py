"""Schedules against their closed forms, and how they drive the optimizer's param groups."""

import math

import pytest
import torch

from harness.errors import ConfigError
from harness.schedules import Schedule
from tests.harness.helpers import compose_config


def multipliers(cfg, total=100, steps_per_epoch=10):
    schedule = Schedule(cfg, total, steps_per_epoch)
    return [schedule.multiplier(t) for t in range(total)]


def test_cosine_per_step_and_per_epoch():
    per_step = multipliers({"name": "cosine"})
    assert per_step[0] == 1.0 and per_step[50] == pytest.approx(0.5) and per_step[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    per_epoch = multipliers({"name": "cosine", "interval": "epoch"})
    assert per_epoch[19] == pytest.approx(0.5 * (1 + math.cos(math.pi * 1 / 10)))  # epoch 1 of 10
    assert len(set(per_epoch[10:20])) == 1


def test_stage_fractions_and_counts():
    assert multipliers({"name": "stage", "interval": "step", "milestones": [0.5, 0.75], "gamma": 0.1})[74] == pytest.approx(0.1)
    assert multipliers({"name": "stage", "interval": "epoch", "milestones": [2, 4], "gamma": 0.5})[45] == pytest.approx(0.25)


def test_stage_with_warmup_against_a_hand_computed_list():
    # 10 epochs of 4 steps: warm-up over 2 epochs rising every step from 0, then ×0.1 at epochs 5 and 8
    per_epoch = multipliers({"name": "stage", "interval": "epoch", "milestones": [5, 8], "gamma": 0.1, "warmup": 2},
                            total=40, steps_per_epoch=4)
    expected = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875] + [1.0] * 12 + [0.1] * 12 + [0.01] * 8
    assert per_epoch == pytest.approx(expected)
    # per step: warm-up over a fifth of 20 steps from 0.5, then ×0.5 from step 10 (half the run)
    per_step = multipliers({"name": "stage", "interval": "step", "milestones": [0.5], "gamma": 0.5, "warmup": 0.2,
                            "start_factor": 0.5}, total=20)
    assert per_step == pytest.approx([0.5, 0.625, 0.75, 0.875] + [1.0] * 6 + [0.5] * 10)


def test_imagenet_resnet50_preset_schedule():
    # llqr_spec.md §8.4: 100 epochs of 5004 steps, linear warm-up over 5 % of training, ×0.1 at epochs 30/70/90
    cfg = compose_config(["experiment=imagenet_resnet50"])
    schedule = Schedule(cfg.schedule, 100 * 5004, 5004)
    points = {0: 0.0, 2502: 0.1, 5 * 5004 - 1: (5 * 5004 - 1) / (5 * 5004), 5 * 5004: 1.0, 30 * 5004 - 1: 1.0,
              30 * 5004: 0.1, 70 * 5004 - 1: 0.1, 70 * 5004: 0.01, 90 * 5004: 0.001, 100 * 5004 - 1: 0.001}
    assert [schedule.multiplier(step) for step in points] == pytest.approx(list(points.values()))


def test_exponential_matches_psgd_lenet5_decay():
    # PSGD LeNet-5: lr 0.1 (epoch 1) -> 0.001 (epoch 10), lr *= 0.01**(1/9) each epoch
    values = multipliers({"name": "exponential", "interval": "epoch", "final_factor": 0.01})
    assert values[0] == 1.0 and values[99] == pytest.approx(0.01)
    assert values[10] / values[0] == pytest.approx(0.01 ** (1 / 9))


def test_warmup_cosine_and_inverse_sqrt():
    warm = multipliers({"name": "warmup_cosine", "warmup": 10, "start_factor": 0.1})
    assert warm[0] == pytest.approx(0.1) and warm[5] == pytest.approx(0.55) and warm[10] == pytest.approx(1.0)
    inv = multipliers({"name": "inverse_sqrt", "warmup": 16}, total=200)
    assert inv[8] == pytest.approx(0.5) and inv[64] == pytest.approx(0.5) and inv[16] == pytest.approx(1.0)


def test_schedule_sets_lr_and_extra_keys_of_every_group():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.2}, {"params": [model.bias], "lr": 0.1}])
    for group in optimizer.param_groups:
        group["lr_preconditioner"] = 0.5
    schedule = Schedule({"name": "stage", "interval": "step", "milestones": [5], "gamma": 0.1,
                         "also": {"lr_preconditioner": {"name": "constant"}}}, 10, None)
    schedule.attach(optimizer)
    schedule.apply(optimizer, 7)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.01])
    assert [g["lr_preconditioner"] for g in optimizer.param_groups] == [0.5, 0.5]


def test_bad_schedule_options():
    with pytest.raises(ConfigError, match="schedule.interval='hour' is invalid"):
        Schedule({"name": "cosine", "interval": "hour"}, 10, 5)
    with pytest.raises(ConfigError, match="interval='epoch' needs a dataset with epochs"):
        Schedule({"name": "cosine", "interval": "epoch"}, 10, None)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'gama'"):
        Schedule({"name": "stage", "gama": 0.1}, 10, 5)
