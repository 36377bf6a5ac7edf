"""Speed and memory of the in-house baselines against their base optimizers, measured in the same run.

K-FAC (factors every 10 steps, eigendecompositions every 100; exact damping, and π-damping whose damped
inverses are formed at the inverse update) against SGD with momentum, its base step;
Shampoo (precondition_frequency 100, Adam grafting, preconditioning from step 1) against Adam, its grafting method.
For each of the small ResNet, GPT and LSTM of scripts/benchmarks/common.py it prints ms/step (the whole
`step(closure)`: forward, backward and optimizer), the ratio to the base optimizer, and optimizer-state bytes
over parameter bytes.

Every optimizer has its own copy of the model and batch; all are timed in one process in rounds: in each round
every optimizer runs a chunk of 10 steps (one factor update) between two chunks of its base optimizer, and its
ratio in that round is its time over the mean of theirs (scripts/benchmarks/common.py `sandwiched_ratios`; on CPU
the clock is the process's CPU time). Ten warm-up steps line the chunks up with the refresh period. `x base`
weighs the median ratio over ordinary chunks (0.9) and over the chunks that hold a refresh (steps 100, 200, ...;
0.1), so load spikes move it little; `total` is the plain ratio of mean ms/step. `sgd (control)`, a second SGD
timed like the others, shows the noise floor (it should read 1.00).

    python -m scripts.benchmarks.bench_baselines [--device cuda] [--steps 200] [--problems resnet gpt lstm]
        [--optimizers sgd kfac]

Use at least 100 timed steps so that a refresh (every 100 steps) is counted.
"""

import statistics

import torch

from baselines import KFAC, Shampoo
from scripts.benchmarks.common import (configure_malloc, default_parser, make_closure, make_problem, param_bytes,
                                       sandwiched_ratios, state_bytes)

CHUNK, PERIOD = 10, 100  # steps per timed chunk (= K-FAC's factor interval); refresh period of K-FAC and Shampoo

OPTIMIZERS = {
    "sgd": (None, lambda model: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)),
    "sgd (control)": ("sgd", lambda model: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)),
    "kfac": ("sgd", lambda model: KFAC(model.parameters(), model=model, lr=0.01, momentum=0.9, factor_update_freq=CHUNK,
                                       inv_update_freq=PERIOD, verbose=False)),
    "kfac-pi": ("sgd", lambda model: KFAC(model.parameters(), model=model, lr=0.01, momentum=0.9,
                                          factor_update_freq=CHUNK, inv_update_freq=PERIOD, pi_damping=True,
                                          verbose=False)),
    "adam": (None, lambda model: torch.optim.Adam(model.parameters(), lr=1e-3)),
    # start_preconditioning_step=1: every timed step takes the Shampoo direction (with the default start,
    # = precondition_frequency, the first 100 steps would be Adam-grafting steps alone).
    "shampoo": ("adam", lambda model: Shampoo(model.parameters(), lr=1e-3, betas=(0.9, 0.999), grafting="adam",
                                              precondition_frequency=PERIOD, start_preconditioning_step=1)),
}


def measure(problem, device, steps, names):
    """{name: (ms/step, x base, total ratio, state bytes over parameter bytes)} for the optimizers `names`."""
    runs = {}
    for name in names:
        model, inputs, targets, _ = make_problem(problem, device)
        optimizer = OPTIMIZERS[name][1](model)
        closure = make_closure(model, inputs, targets)
        for _ in range(CHUNK):  # warm-up: steps 0-9, so that timed chunk k starts at step 10·(k + 1)
            optimizer.step(closure)
        runs[name] = (model, optimizer, (lambda o, c: lambda: o.step(c))(optimizer, closure))
    rounds = -(-steps // CHUNK)
    base_of = {name: OPTIMIZERS[name][0] for name in runs if OPTIMIZERS[name][0] in runs}
    times, ratios = sandwiched_ratios({name: run[2] for name, run in runs.items()}, base_of, rounds, CHUNK, device)
    refresh = [(CHUNK * (k + 1)) % PERIOD == 0 for k in range(rounds)]
    results = {}
    for name, (model, optimizer, _) in runs.items():
        ratio = total = float("nan")
        if name in base_of:
            plain = statistics.median(r for r, f in zip(ratios[name], refresh) if not f)
            refreshed = [r for r, f in zip(ratios[name], refresh) if f]
            ratio = 0.9 * plain + 0.1 * statistics.median(refreshed) if refreshed else plain
            total = statistics.mean(times[name]) / statistics.mean(times[base_of[name]])
        results[name] = (statistics.mean(times[name]), ratio, total, state_bytes(optimizer) / param_bytes(model))
    return results


def main():
    parser = default_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=200)
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS))
    args = parser.parse_args()
    device = torch.device(args.device)
    malloc = configure_malloc(args)
    names = list(dict.fromkeys([OPTIMIZERS[n][0] for n in args.optimizers if OPTIMIZERS[n][0]] + args.optimizers))
    clock = "wall clock" if device.type == "cuda" else "process CPU time"
    print(f"device={device} steps={args.steps} in chunks of {CHUNK} between the base's threads={torch.get_num_threads()} "
          f"clock={clock} malloc={malloc}")
    print(f"{'problem':8} {'optimizer':13} {'ms/step':>9} {'base':>5} {'x base':>7} {'total':>6} {'state/params':>13}")
    for problem in args.problems:
        results = measure(problem, device, args.steps, names)
        for name, (ms, ratio, total, size) in results.items():
            base = OPTIMIZERS[name][0] or "-"
            print(f"{problem:8} {name:13} {ms:9.2f} {base:>5} {ratio:7.2f} {total:6.2f} {size:13.2f}", flush=True)


if __name__ == "__main__":
    main()
