"""Shared pieces of the benchmark scripts: small models of the three families the papers use, and timing.

The models are deliberately small so that a benchmark finishes in a minute on two CPU cores; the
ratios they print (ms/step of an optimizer over its base optimizer, in the same run) are what matters.
"""

import argparse
import ctypes
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet with two basic blocks (3x3 stem, BatchNorm, shortcut projection)."""

    def __init__(self, width=16, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = _BasicBlock(width, width, stride=1)
        self.block2 = _BasicBlock(width, 2 * width, stride=2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallGPT(nn.Module):
    """A GPT-2 style decoder (pre-LayerNorm, causal attention from nn.Linear, tied embeddings)."""

    def __init__(self, vocab=65, block=64, n_layer=2, n_head=4, n_embd=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(_GPTBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class _GPTBlock(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.fc, self.fc_out = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class SmallLSTM(nn.Module):
    """A one-layer LSTM language model whose cell is built from nn.Linear (so Kronecker methods see it)."""

    def __init__(self, vocab=100, n_embd=64, hidden=128):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, n_embd)
        self.gates = nn.Linear(n_embd + hidden, 4 * hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, idx):
        h = idx.new_zeros(idx.shape[0], self.hidden, dtype=torch.float32)
        c = torch.zeros_like(h)
        outputs = []
        for x in self.embed(idx).unbind(1):
            i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return self.out(torch.stack(outputs, dim=1))


def make_problem(name, device, batch_size=32, seed=0):
    """Return (model, inputs, targets, loss_kind) for one of "resnet", "gpt", "lstm"."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "resnet":
        model = SmallResNet()
        inputs = torch.randn(batch_size, 3, 32, 32, generator=g)
        targets = torch.randint(0, 10, (batch_size,), generator=g)
    elif name == "gpt":
        model = SmallGPT()
        inputs = torch.randint(0, 65, (batch_size, 64), generator=g)
        targets = torch.randint(0, 65, (batch_size, 64), generator=g)
    elif name == "lstm":
        model = SmallLSTM()
        inputs = torch.randint(0, 100, (batch_size, 32), generator=g)
        targets = torch.randint(0, 100, (batch_size, 32), generator=g)
    else:
        raise ValueError(f"Unknown benchmark problem: {name!r}. Choose one of 'resnet', 'gpt', 'lstm'.")
    return model.to(device), inputs.to(device), targets.to(device), "cross_entropy"


def cross_entropy(outputs, targets):
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def make_closure(model, inputs, targets):
    """A closure following the harness protocol (see harness/protocol.py)."""

    def closure(backward=True):
        if backward:
            model.zero_grad(set_to_none=True)
        loss = cross_entropy(model(inputs), targets)
        if backward:
            loss.backward()
        return loss

    closure.inputs, closure.targets, closure.model = inputs, targets, model
    return closure


def clock(device, wall=False):
    """Seconds for timing one process's work: on CPU the process's CPU time (on a shared, loaded machine it leaves
    out the time other processes hold the core; with one thread it is the steps' own time), on CUDA (or with
    `wall`) the wall clock, after a synchronize on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() if wall or device.type == "cuda" else time.process_time()


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse rather than give it back to the OS (mallopt
    M_MMAP_THRESHOLD = 32 MiB, M_TRIM_THRESHOLD = 2 GiB); True if it took effect.

    Otherwise whether a step's activations come from reused heap memory or from fresh pages (page faults, counted
    in the process's CPU time) depends on the heap's layout, i.e. on what else the benchmark process holds: two
    optimizers computing the same thing then differ by up to ~15% on the small ResNet, in either direction."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, (2 << 30) - 1))


def sandwiched_ratios(steppers, base_of, rounds, block_steps, device):
    """Time optimizers against their base optimizers on a shared, loaded machine: ({name: [ms/step of each block]},
    {name: [ratio of each round]}).

    `steppers` maps a name to a zero-argument callable that runs one step; `base_of` maps the name of each
    optimizer to compare to the name of its base (another stepper). Every round runs, for each compared optimizer
    in turn (starting one place further each round), a block of `block_steps` steps of its base, a block of it,
    and a block of its base again (shared with the next optimizer of the same base); its ratio in that round is
    its ms/step over the mean of the two base blocks around it. Load changes slower than three blocks then cancel,
    and a median over rounds (`statistics.median(ratios[name])`) leaves out the rounds a spike hit."""
    others = [name for name in steppers if base_of.get(name)]
    times = {name: [] for name in steppers}
    ratios = {name: [] for name in others}

    def block(name):
        start = clock(device)
        for _ in range(block_steps):
            steppers[name]()
        times[name].append(1000.0 * (clock(device) - start) / block_steps)
        return times[name][-1]

    for r in range(rounds):
        last = None  # (base, ms/step) of the base block just run
        for name in others[r % len(others):] + others[:r % len(others)]:
            base = base_of[name]
            before = last[1] if last is not None and last[0] == base else block(base)
            ms = block(name)
            last = (base, block(base))
            ratios[name].append(2.0 * ms / (before + last[1]))
    return times, ratios


def state_bytes(optimizer):
    """Bytes held in tensors of the optimizer's state (also inside lists, tuples and dicts of it)."""
    return sum(_tensor_bytes(state) for state in optimizer.state.values())


def _tensor_bytes(value):
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def default_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--problems", nargs="+", default=["resnet", "gpt", "lstm"])
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc's malloc as it is (default: keep_freed_memory, for steadier ratios)")
    return parser


def configure_malloc(args):
    """Apply ``--malloc-default`` (see keep_freed_memory); returns the setting in words, for the header line."""
    return "glibc default" if args.malloc_default or not keep_freed_memory() else "keeps freed memory"
