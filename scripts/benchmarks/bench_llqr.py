"""LLQR overhead (issue 5 §5): ms per refit, ms/step without refit, amortised ms/step over the base optimizer.

For each problem (small ResNet with BatchNorm, small GPT) and each structure (diagonal, e-kfac), in one run:
the base optimizer (torch.optim.SGD, momentum 0.9) is timed on the same closure, LLQR's step is timed between
refits, one refit (``precond_steps`` inner steps on ``--precond-batch-size`` rows of the training batch; the
LLQR presets refit on 64 samples while training on 128 (CIFAR) or 512 (grokking)) is timed, and

    amortised ms/step = ms/step(no refit) + ms/refit / T,   ratio = amortised / base ms/step

is printed for each refit period T. Goal (issue 5 §5): ratio ≤ 1.15 at T = 250.

On a shared machine the base optimizer and the LLQR variants are timed in interleaved rounds and each figure is
the minimum over ``--rounds`` (the least-disturbed measurement); ``--clock cpu`` times process CPU seconds instead
of wall seconds (with OMP_NUM_THREADS=1 this is insensitive to other jobs' load). "step-0 ms" is the first step:
its refit also traces the cached linearisation (llqr/tangent.py), which is paid once per batch shape.

    OMP_NUM_THREADS=1 python -m scripts.benchmarks.bench_llqr [--device cpu] [--problems resnet gpt] [--clock cpu]
        [--batch-size 128 --precond-batch-size 64]      # the CIFAR preset's ratio of refit to training batch
        [--tangent traced compiled]                     # also LLQR(cached_linearization="compiled")
"""
import time

import torch

from llqr import LLQR
from scripts.benchmarks.common import default_parser, make_closure, make_problem


def _clock(kind, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.process_time() if kind == "cpu" else time.perf_counter()


def _time_ms(fn, repeats, clock, device, warmup=0):
    for _ in range(warmup):  # untimed: memory released by the previous block (a refit) is mapped again
        fn()
    start = _clock(clock, device)
    for _ in range(repeats):
        fn()
    return 1000.0 * (_clock(clock, device) - start) / repeats


def _make_llqr(name, structure, tangent, args, device):
    model, inputs, targets, loss = make_problem(name, device, batch_size=args.batch_size)
    closure = make_closure(model, inputs, targets)
    opt = LLQR(model.parameters(), model=model, loss=loss, lr=1e-3, momentum=0.9, block_structure=structure,
               divergence=args.divergence, update_preconditioner_every=10 ** 9, precond_steps=args.inner_steps,
               precond_batch_size=args.precond_batch_size,
               cached_linearization="compiled" if tangent == "compiled" else True, verbose=False)
    refit_rows = args.precond_batch_size or args.batch_size  # what the optimizer's own refits use (its docstring)
    inputs, targets = inputs[:refit_rows], targets[:refit_rows]
    first_refit = _time_ms(lambda: opt.step(closure), 1, args.clock, device)  # step 0 refits (and traces)
    for _ in range(args.warmup):
        opt.step(closure)
    return dict(opt=opt, closure=closure, inputs=inputs, targets=targets, first=first_refit, step=[], refit=[])


def bench_problem(name, args, device):
    model, inputs, targets, loss = make_problem(name, device, batch_size=args.batch_size)
    closure = make_closure(model, inputs, targets)
    base = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(args.warmup):
        base.step(closure)
    runs = {(structure, tangent): _make_llqr(name, structure, tangent, args, device)
            for structure in args.structures for tangent in args.tangent}
    base_times = []
    for _ in range(args.rounds):  # interleaved rounds: base, then each LLQR's steps and one refit
        base_times.append(_time_ms(lambda: base.step(closure), args.steps, args.clock, device, args.warmup))
        for run in runs.values():
            opt, cl = run["opt"], run["closure"]
            run["step"].append(_time_ms(lambda: opt.step(cl), args.steps, args.clock, device, args.warmup))
            run["refit"].append(_time_ms(lambda: opt.refit(run["inputs"], run["targets"]), 1, args.clock, device))
    base_ms, rows = min(base_times), []
    for (structure, tangent), run in runs.items():
        step_ms, refit_ms = min(run["step"]), min(run["refit"])
        for period in args.periods:
            amortised = step_ms + refit_ms / period
            rows.append((name, structure, tangent, period, base_ms, step_ms, refit_ms, run["first"], amortised,
                         amortised / base_ms))
    return rows


def main():
    parser = default_parser(__doc__.splitlines()[0])
    parser.set_defaults(problems=["resnet", "gpt"])
    parser.add_argument("--structures", nargs="+", default=["diagonal", "e-kfac"])
    parser.add_argument("--periods", nargs="+", type=int, default=[250, 1000])
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--divergence", default="ngd")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precond-batch-size", type=int, default=None,
                        help="refit batch (first rows of the training batch); default: the whole training batch")
    parser.add_argument("--tangent", nargs="+", choices=["traced", "compiled"], default=["traced"],
                        help="the refit's tangent graph: traced (cached_linearization=True) and/or compiled "
                             "(cached_linearization='compiled', torch.compile); several are timed side by side")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (minimum reported)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"LLQR overhead, device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"batch {args.batch_size}, refit batch {args.precond_batch_size or args.batch_size}, {args.inner_steps} inner "
          f"steps, divergence={args.divergence}, clock={args.clock}, min of {args.rounds} rounds")
    header = ("problem", "U", "tangent", "T", "base ms/step", "LLQR ms/step", "ms/refit", "step-0 ms (refit+trace)",
              "amortised ms/step", "ratio")
    print(" | ".join(header))
    for name in args.problems:
        for row in bench_problem(name, args, device):
            print(" | ".join([*row[:3], str(row[3])] + [f"{v:.2f}" for v in row[4:9]] + [f"{row[9]:.3f}x"]))


if __name__ == "__main__":
    main()
