"""LLQR overhead (issue 5 §5): ms per refit, ms/step without refit, amortised ms/step over the base optimizer.

For each problem (small ResNet with BatchNorm, small GPT) and each structure (diagonal, e-kfac), in one run:
the base optimizer (torch.optim.SGD, momentum 0.9) is timed on the same closure, LLQR's step is timed between
refits, one refit (``precond_steps`` inner steps on ``--precond-batch-size`` rows of the training batch; the
LLQR presets refit on 64 samples while training on 128 (CIFAR) or 512 (grokking)) is timed, and

    amortised ms/step = ms/step(no refit) + ms/refit / T,   ratio = amortised / base ms/step

is printed for each refit period T. Goal (issue 5 §5): ratio ≤ 1.15 at T = 250.

On a shared machine the timings are sandwiched: in every round, each LLQR variant's block of steps and its refit
run between two blocks of the base optimizer, and that round's ratio is LLQR's (ms/step + ms/refit / T) over the
mean of the two base blocks around it; the ratio printed is the median over ``--rounds`` (load that drifts slower
than a sandwich cancels, a spike hits one round), and the ms columns are medians too. ``--clock cpu`` times
process CPU seconds instead of wall seconds. "step-0 ms" is the first step: its refit also traces the cached
linearisation (llqr/tangent.py), which is paid once per batch shape.

    OMP_NUM_THREADS=1 python -m scripts.benchmarks.bench_llqr [--device cpu] [--problems resnet gpt] [--clock cpu]
        [--batch-size 128 --precond-batch-size 64]      # the CIFAR preset's ratio of refit to training batch
        [--tangent traced compiled]                     # also LLQR(cached_linearization="compiled")
"""
import statistics

import torch

from llqr import LLQR
from scripts.benchmarks.common import clock, default_parser, make_closure, make_problem


def _time_ms(fn, repeats, kind, device, warmup=0):
    for _ in range(warmup):  # untimed: memory released by the previous block (a refit) is mapped again
        fn()
    start = clock(device, wall=kind == "wall")
    for _ in range(repeats):
        fn()
    return 1000.0 * (clock(device, wall=kind == "wall") - start) / repeats


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
    return dict(opt=opt, closure=closure, inputs=inputs, targets=targets, first=first_refit, step=[], refit=[], base=[])


def bench_problem(name, args, device):
    model, inputs, targets, loss = make_problem(name, device, batch_size=args.batch_size)
    closure = make_closure(model, inputs, targets)
    base = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(args.warmup):
        base.step(closure)
    runs = {(structure, tangent): _make_llqr(name, structure, tangent, args, device)
            for structure in args.structures for tangent in args.tangent}

    def base_step():
        return _time_ms(lambda: base.step(closure), args.steps, args.clock, device, args.warmup)

    base_times, after = [], base_step()
    for r in range(args.rounds):  # sandwiches: base block, LLQR steps, one refit, base block (the next's "before")
        for key in list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]:
            run, before = runs[key], after
            opt, cl = run["opt"], run["closure"]
            run["step"].append(_time_ms(lambda: opt.step(cl), args.steps, args.clock, device, args.warmup))
            run["refit"].append(_time_ms(lambda: opt.refit(run["inputs"], run["targets"]), 1, args.clock, device))
            after = base_step()
            base_times.append(after)
            run["base"].append(0.5 * (before + after))
    rows = []
    for (structure, tangent), run in runs.items():
        step_ms, refit_ms = statistics.median(run["step"]), statistics.median(run["refit"])
        for period in args.periods:
            ratios = [(s + f / period) / b for s, f, b in zip(run["step"], run["refit"], run["base"])]
            rows.append((name, structure, tangent, period, statistics.median(base_times), step_ms, refit_ms,
                         run["first"], step_ms + refit_ms / period, statistics.median(ratios)))
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
    parser.add_argument("--rounds", type=int, default=5, help="sandwiched timing rounds (median reported)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"LLQR overhead, device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"batch {args.batch_size}, refit batch {args.precond_batch_size or args.batch_size}, {args.inner_steps} inner "
          f"steps, divergence={args.divergence}, clock={args.clock}, median of {args.rounds} sandwiched rounds")
    header = ("problem", "U", "tangent", "T", "base ms/step", "LLQR ms/step", "ms/refit", "step-0 ms (refit+trace)",
              "amortised ms/step", "ratio")
    print(" | ".join(header))
    for name in args.problems:
        for row in bench_problem(name, args, device):
            print(" | ".join([*row[:3], str(row[3])] + [f"{v:.2f}" for v in row[4:9]] + [f"{row[9]:.3f}x"]))


if __name__ == "__main__":
    main()
