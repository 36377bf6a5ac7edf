"""LeNet-5 against Li's demo (psgd_torch f0fa983 `mnist_with_lenet5.py`): its forward on bias-augmented matrices,
written out here from our parameters, and its initialisation (every weight and bias 0.1·N(0, 1))."""
import pytest
import torch
import torch.nn.functional as F

from harness.models import MODELS

MNIST = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def _demo_forward(m, x):
    w1 = torch.cat([m.conv1.weight.reshape(6, -1), m.conv1.bias[:, None]], 1)  # (out_chs, in_chs*H*W + 1)
    w2 = torch.cat([m.conv2.weight.reshape(16, -1), m.conv2.bias[:, None]], 1)
    w3, w4, w5 = (torch.cat([fc.weight.T, fc.bias[None]], 0) for fc in (m.fc1, m.fc2, m.fc3))  # (in + 1, out)
    x = F.relu(F.max_pool2d(F.conv2d(x, w1[:, :-1].view(6, 1, 5, 5), bias=w1[:, -1]), 2))
    x = F.relu(F.max_pool2d(F.conv2d(x, w2[:, :-1].view(16, 6, 5, 5), bias=w2[:, -1]), 2))
    x = F.relu(x.view(-1, 16 * 4 * 4).mm(w3[:-1]) + w3[-1])
    x = F.relu(x.mm(w4[:-1]) + w4[-1])
    return x.mm(w5[:-1]) + w5[-1]


def test_forward_equals_the_demo():
    torch.manual_seed(0)
    model = MODELS["lenet5"](MNIST).double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(x), _demo_forward(model, x), rtol=1e-12, atol=1e-12)


def test_reference_init_is_a_tenth_of_a_standard_normal_everywhere():
    torch.manual_seed(0)
    params = torch.cat([p.reshape(-1) for p in MODELS["lenet5"](MNIST).parameters()])
    assert params.numel() == 44_426 and abs(float(params.std()) - 0.1) < 0.003 and abs(float(params.mean())) < 0.003
    torch.manual_seed(0)
    default = MODELS["lenet5"](MNIST, init="torch")
    assert float(default.conv2.weight.abs().max()) <= (6 * 25) ** -0.5  # torch's U(±1/sqrt(fan_in))


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="model.init='xavier' is not known"):
        MODELS["lenet5"](MNIST, init="xavier")
