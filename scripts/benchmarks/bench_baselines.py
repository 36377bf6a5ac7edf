"""Speed and memory of the in-house baselines against their base optimizers, measured in the same run.

K-FAC (factors every 10 steps, eigendecompositions every 100; exact damping, and π-damping whose damped
inverses are formed at the inverse update) against SGD with momentum, its base step;
Shampoo (precondition_frequency 100, Adam grafting, preconditioning from step 1) against Adam, its grafting method. For each of the small
ResNet, GPT and LSTM of scripts/benchmarks/common.py it prints ms/step (the whole `step(closure)`: forward,
backward and optimizer), the ratio to the base optimizer, and optimizer-state bytes over parameter bytes.
The optimizers are timed in interleaved chunks of 10 steps; on CPU the clock is the process's CPU time.

    python -m scripts.benchmarks.bench_baselines [--device cuda] [--steps 200] [--problems resnet gpt lstm]

Use at least 100 timed steps so that the amortised refreshes (every 100 steps) are counted.
"""

import time

import torch

from baselines import KFAC, Shampoo
from scripts.benchmarks.common import default_parser, make_closure, make_problem, param_bytes, state_bytes

OPTIMIZERS = {
    "sgd": (None, lambda model: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)),
    "kfac": ("sgd", lambda model: KFAC(model.parameters(), model=model, lr=0.01, momentum=0.9, factor_update_freq=10,
                                       inv_update_freq=100, verbose=False)),
    "kfac-pi": ("sgd", lambda model: KFAC(model.parameters(), model=model, lr=0.01, momentum=0.9, factor_update_freq=10,
                                          inv_update_freq=100, pi_damping=True, verbose=False)),
    "adam": (None, lambda model: torch.optim.Adam(model.parameters(), lr=1e-3)),
    # start_preconditioning_step=1: every timed step takes the Shampoo direction (with the default start,
    # = precondition_frequency, the first 100 steps would be Adam-grafting steps alone).
    "shampoo": ("adam", lambda model: Shampoo(model.parameters(), lr=1e-3, betas=(0.9, 0.999), grafting="adam",
                                              precondition_frequency=100, start_preconditioning_step=1)),
}


def _clock(device):
    """CPU: this process's CPU time (the box is shared; with one thread it is the step's own time).
    CUDA: wall-clock time after a synchronize."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def measure(problem, device, steps, warmup, chunk=10):
    """ms/step and state/param bytes of every optimizer on one problem, timed in interleaved chunks of
    `chunk` steps so that a change of load on the machine affects them all alike."""
    runs = {}
    for name, (_, build) in OPTIMIZERS.items():
        model, inputs, targets, _ = make_problem(problem, device)
        optimizer = build(model)
        closure = make_closure(model, inputs, targets)
        for _ in range(warmup):
            optimizer.step(closure)
        runs[name] = [model, optimizer, closure, 0.0]
    for _ in range(0, steps, chunk):
        for run in runs.values():
            start = _clock(device)
            for _ in range(chunk):
                run[1].step(run[2])
            run[3] += _clock(device) - start
    n = -(-steps // chunk) * chunk
    return {name: (1000.0 * total / n, state_bytes(opt) / param_bytes(model))
            for name, (model, opt, _, total) in runs.items()}


def main():
    parser = default_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    clock = "wall clock" if device.type == "cuda" else "process CPU time"
    print(f"device={device} steps={args.steps} warmup={args.warmup} threads={torch.get_num_threads()} clock={clock}")
    print(f"{'problem':8} {'optimizer':9} {'ms/step':>9} {'base':>5} {'x base':>7} {'state/params':>13}")
    for problem in args.problems:
        results = measure(problem, device, args.steps, args.warmup)
        for name, (ms, ratio) in results.items():
            base = OPTIMIZERS[name][0]
            versus = f"{ms / results[base][0]:7.2f}" if base else f"{'-':>7}"
            print(f"{problem:8} {name:9} {ms:9.2f} {base or '-':>5} {versus} {ratio:13.2f}")


if __name__ == "__main__":
    main()
