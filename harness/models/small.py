"""The small models of both papers: MLP, logistic regression, LeNet-5, the delayed-XOR RNN and LSTM, Rosenbrock.

Recurrent cells are built from nn.Linear so that Kronecker-factored optimizers see every weight matrix.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def _flat_input(info):
    """(embedding or None, flattened input width) for vector, image and token inputs."""
    if "vocab_size" in info:
        return nn.Embedding(info["vocab_size"], 32), 32 * info["seq_len"]
    if "image_size" in info:
        return None, info["in_channels"] * info["image_size"] ** 2
    return None, info["input_dim"] * info.get("seq_len", 1)


class MLP(nn.Module):
    def __init__(self, info, hidden, activation):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={activation!r} is not known; choose one of {sorted(ACTIVATIONS)}")
        self.embed, width = _flat_input(info)
        layers = []
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        layers.append(nn.Linear(width, info.get("num_classes", info.get("output_dim", 1))))
        self.net = nn.Sequential(*layers)
        self.squeeze = "num_classes" not in info  # scalar output per sample

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        out = self.net(x.flatten(1))
        return out.squeeze(-1) if self.squeeze else out


@register_model("mlp")
def mlp(info, hidden=(128, 128), activation="relu"):
    """A fully connected network on flattened inputs (token inputs are embedded first)."""
    return MLP(info, list(hidden), activation)


class OuterProductLogistic(nn.Module):
    """Logistic regression on vec(x xᵀ) of the flattened image (PSGD paper E.3: 784² = 614,656 features).

    Zero-initialised as the reference script (psgd_notes.md §6.12). The weight is stored as the reference's
    (classes, 784²) matrix, but the features are never formed: logit_c = xᵀ W_c x + b_c, two matrix products
    instead of a (batch × 614,656) feature tensor.
    """

    def __init__(self, info):
        super().__init__()
        self.width = info["in_channels"] * info["image_size"] ** 2
        self.weight = nn.Parameter(torch.zeros(info["num_classes"], self.width * self.width))
        self.bias = nn.Parameter(torch.zeros(info["num_classes"]))

    def forward(self, x):
        x = x.flatten(1)
        w = self.weight.view(-1, self.width, self.width)                  # (classes, i, j), row-major as vec(x xᵀ)
        xw = torch.einsum("bi,cij->bcj", x, w)                            # xᵀ W_c for every class
        return (xw * x[:, None, :]).sum(-1) + self.bias


@register_model("logistic_regression")
def logistic_regression(info, features="flat"):
    """Multinomial logistic regression: one linear layer on the flattened input, or on its outer product."""
    if features == "outer_product":
        if "image_size" not in info:
            raise ValueError("model.features='outer_product' needs an image dataset (e.g. dataset=mnist)")
        return OuterProductLogistic(info)
    if features != "flat":
        raise ValueError(f"model.features={features!r} is not known; choose 'flat' or 'outer_product'")
    return MLP(info, [], "relu")


class LeNet5(nn.Module):
    """LeNet-5 as in the PSGD reference's MNIST demo: two 5×5 convolutions with max-pooling, then 120-84-classes.

    ``init="psgd_reference"``: every weight and bias drawn 0.1·N(0, 1), as `mnist_with_lenet5.py` (lixilinx/psgd_torch
    f0fa983); ``init="torch"``: PyTorch's default initialisation of each layer.
    """

    def __init__(self, in_channels, image_size, num_classes, init="psgd_reference"):
        super().__init__()
        if init not in ("psgd_reference", "torch"):
            raise ValueError(f"model.init={init!r} is not known; choose 'psgd_reference' or 'torch'")
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        if init == "psgd_reference":
            with torch.no_grad():
                for p in self.parameters():
                    p.normal_(0.0, 0.1)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


@register_model("lenet5")
def lenet5(info, init="psgd_reference"):
    return LeNet5(info["in_channels"], info["image_size"], info["num_classes"], init)


class XorRNN(nn.Module):
    """The PSGD reference's delayed-XOR RNN (psgd_notes.md §7): h_t = tanh(W_x x_t + W_h h_{t−1} + b), ŷ = w·h_L + c.

    Initialisation as the reference: W_x ~ 0.1·N(0, 1), W_h random orthogonal, readout ~ 0.1·N(0, 1), biases 0.
    """

    def __init__(self, input_dim, hidden):
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(input_dim, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.readout = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.input.weight.normal_(0.0, 0.1)
            self.input.bias.zero_()
            nn.init.orthogonal_(self.recurrent.weight)
            self.readout.weight.normal_(0.0, 0.1)
            self.readout.bias.zero_()

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        for x_t in x.unbind(1):
            h = torch.tanh(self.input(x_t) + self.recurrent(h))
        return self.readout(h).squeeze(-1)


class XorLSTM(nn.Module):
    """The PSGD reference's XOR LSTM: one fused gate matrix on [x, h, c, 1] (the cell state is an input),
    c ← f·c + i·(2g − 1), h ← o·tanh(c); forget-gate bias +1 and g-gate weights doubled so 2σ(2z) − 1 = tanh(z)."""

    def __init__(self, input_dim, hidden):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(input_dim + 2 * hidden, 4 * hidden)
        self.readout = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer in (self.gates, self.readout):
                layer.weight.normal_(0.0, 0.1)
                layer.bias.normal_(0.0, 0.1)
            self.gates.bias[hidden : 2 * hidden] += 1.0
            self.gates.weight[2 * hidden : 3 * hidden] *= 2.0
            self.gates.bias[2 * hidden : 3 * hidden] *= 2.0

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        c = torch.zeros_like(h)
        for x_t in x.unbind(1):
            i, f, g, o = torch.sigmoid(self.gates(torch.cat([x_t, h, c], dim=1))).chunk(4, dim=1)
            c = f * c + i * (2.0 * g - 1.0)
            h = o * torch.tanh(c)
        return self.readout(h).squeeze(-1)


@register_model("xor_rnn")
def xor_rnn(info, hidden=30):
    return XorRNN(info["input_dim"], hidden)


@register_model("xor_lstm")
def xor_lstm(info, hidden=30):
    return XorLSTM(info["input_dim"], hidden)


class RosenbrockFunction(nn.Module):
    """f(x, y) = (a − x)² + b (y − x²)², the parameters being (x, y); the output is the loss itself."""

    def __init__(self, start, a, b):
        super().__init__()
        self.xy = nn.Parameter(torch.tensor([float(s) for s in start]))
        self.a, self.b = a, b

    def forward(self, inputs):
        x, y = self.xy
        return ((self.a - x) ** 2 + self.b * (y - x**2) ** 2).reshape(1)


@register_model("rosenbrock")
def rosenbrock(info, start=(-1.2, 1.0), a=1.0, b=100.0):
    return RosenbrockFunction(start, a, b)
