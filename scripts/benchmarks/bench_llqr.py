"""LLQR overhead (issue 5 §5): ms per refit, ms/step without refit, amortised ms/step over the base optimizer.

For each problem (small ResNet with BatchNorm, small GPT) and each structure (diagonal, e-kfac), in one run:
the base optimizer (torch.optim.SGD, momentum 0.9) and LLQR's step between refits are timed on the same closure,
one refit (``precond_steps`` inner steps on ``--precond-batch-size`` rows of the training batch; the
LLQR presets refit on 64 samples while training on 128 (CIFAR) or 512 (grokking)) is timed, and

    amortised ms/step = ms/step(no refit) + ms/refit / T,   ratio = amortised / base ms/step

is printed for each refit period T. Goal (issue 5 §5): ratio ≤ 1.15 at T = 250.

The base optimizer and every LLQR variant step the same model on the same batch (separate model instances differed
by up to 15 % in ms/step for identical work: memory placement), and their steps are interleaved one by one, in
alternating order (a step can pay for the one before it), so load that drifts slower than a step cancels. In every
round, each variant runs ``--steps`` pairs of one base and one LLQR step and then one refit, timed between those
base steps and ``--steps`` more base steps; that round's ratio is mean LLQR step / mean base step of its pairs +
ms/refit / (T · mean base step around the refit). The ratio printed is the median over ``--rounds`` (a spike hits
one round), and the ms columns are medians too. ``--clock cpu`` times process CPU seconds instead of wall seconds.
"U·g ms" is the preconditioner product alone (part of LLQR's step). "step-0 ms" is the first step: its refit also
traces the cached linearisation (llqr/tangent.py), which is paid once per batch shape.

    OMP_NUM_THREADS=1 python -m scripts.benchmarks.bench_llqr [--device cpu] [--problems resnet gpt] [--clock cpu]
        [--batch-size 128 --precond-batch-size 64]      # the CIFAR preset's ratio of refit to training batch
        [--tangent traced compiled]                     # also LLQR(cached_linearization="compiled")
"""
import statistics

import torch

from llqr import LLQR
from scripts.benchmarks.common import clock, configure_malloc, default_parser, make_closure, make_problem


def _time_ms(fn, repeats, kind, device):
    start = clock(device, wall=kind == "wall")
    for _ in range(repeats):
        fn()
    return 1000.0 * (clock(device, wall=kind == "wall") - start) / repeats


def _make_llqr(model, loss, structure, tangent, args):
    return LLQR(model.parameters(), model=model, loss=loss, lr=1e-3, momentum=0.9, block_structure=structure,
                divergence=args.divergence, update_preconditioner_every=10 ** 9, precond_steps=args.inner_steps,
                precond_batch_size=args.precond_batch_size,
                cached_linearization="compiled" if tangent == "compiled" else True, verbose=False)


def _pair(step_ms, base, opt, first_is_base):
    """(base ms, LLQR ms) of one step each, in the order given (alternated: a step can pay for the one before it)."""
    if first_is_base:
        return step_ms(base), step_ms(opt)
    llqr_ms = step_ms(opt)
    return step_ms(base), llqr_ms


def bench_problem(name, args, device):
    model, inputs, targets, loss = make_problem(name, device, batch_size=args.batch_size)
    closure = make_closure(model, inputs, targets)
    refit_rows = args.precond_batch_size or args.batch_size  # what the optimizer's own refits use (its docstring)
    refit_inputs, refit_targets = inputs[:refit_rows], targets[:refit_rows]
    base = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step_ms(opt):
        return _time_ms(lambda: opt.step(closure), 1, args.clock, device)

    runs = {}
    for structure in args.structures:
        for tangent in args.tangent:
            opt = _make_llqr(model, loss, structure, tangent, args)
            first = step_ms(opt)  # step 0 refits (and traces)
            runs[(structure, tangent)] = dict(opt=opt, first=first, step=[], base=[], refit=[], base_refit=[],
                                              apply=[])
    for _ in range(args.warmup):
        for opt in [base] + [run["opt"] for run in runs.values()]:
            opt.step(closure)

    for r in range(args.rounds):
        for key in list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]:
            run, opt = runs[key], runs[key]["opt"]
            pairs = [_pair(step_ms, base, opt, first_is_base=i % 2 == 0) for i in range(args.steps)]
            run["base"].append(statistics.fmean(b for b, _ in pairs))
            run["step"].append(statistics.fmean(s for _, s in pairs))
            run["refit"].append(_time_ms(lambda: opt.refit(refit_inputs, refit_targets), 1, args.clock, device))
            after = statistics.fmean(step_ms(base) for _ in range(args.steps))
            run["base_refit"].append(0.5 * (run["base"][-1] + after))
            grads = [p.grad for p in model.parameters()]
            run["apply"].append(_time_ms(lambda: opt.precondition(grads), args.steps, args.clock, device))
    rows = []
    for (structure, tangent), run in runs.items():
        med = {k: statistics.median(run[k]) for k in ("base", "step", "refit", "apply")}
        for period in args.periods:
            ratios = [s / b + f / (period * a)
                      for s, b, f, a in zip(run["step"], run["base"], run["refit"], run["base_refit"])]
            rows.append((name, structure, tangent, period, med["base"], med["step"], med["apply"], med["refit"],
                         run["first"], med["step"] + med["refit"] / period, statistics.median(ratios)))
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
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (median reported)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    device = torch.device(args.device)
    malloc = configure_malloc(args)
    print(f"LLQR overhead, device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"malloc {malloc}, batch {args.batch_size}, refit batch {args.precond_batch_size or args.batch_size}, "
          f"{args.inner_steps} inner steps, divergence={args.divergence}, clock={args.clock}, median of {args.rounds} "
          f"rounds of {args.steps} interleaved step pairs and a refit")
    header = ("problem", "U", "tangent", "T", "base ms/step", "LLQR ms/step", "U·g ms", "ms/refit",
              "step-0 ms (refit+trace)", "amortised ms/step", "ratio")
    print(" | ".join(header))
    for name in args.problems:
        for row in bench_problem(name, args, device):
            print(" | ".join([*row[:3], str(row[3])] + [f"{v:.2f}" for v in row[4:10]] + [f"{row[10]:.3f}x"]))


if __name__ == "__main__":
    main()
