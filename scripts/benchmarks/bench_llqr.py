"""LLQR overhead (issue 5 §5): ms per refit, ms/step without refit, amortised ms/step over the base optimizer.

For each problem (small ResNet with BatchNorm, small GPT) and each structure (diagonal, e-kfac), in one run:
the base optimizer (torch.optim.SGD, momentum 0.9) is timed on the same closure, LLQR's step is timed between
refits, one refit (``precond_steps`` inner steps on a batch of the training batch's size) is timed, and

    amortised ms/step = ms/step(no refit) + ms/refit / T,   ratio = amortised / base ms/step

is printed for each refit period T. Goal (issue 5 §5): ratio ≤ 1.15 at T = 250.

    python -m scripts.benchmarks.bench_llqr [--device cpu] [--problems resnet gpt] [--steps 20]
"""
import time

import torch

from llqr import LLQR
from scripts.benchmarks.common import default_parser, make_closure, make_problem, time_per_step


def _time_refit(opt, inputs, targets, repeats, device):
    opt.refit(inputs, targets)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        opt.refit(inputs, targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - start) / repeats


def bench_problem(name, args, device):
    model, inputs, targets, loss = make_problem(name, device, batch_size=args.batch_size)
    closure = make_closure(model, inputs, targets)
    base = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    base_ms = time_per_step(lambda: base.step(closure), args.steps, args.warmup, device)
    rows = []
    for structure in args.structures:
        model, inputs, targets, loss = make_problem(name, device, batch_size=args.batch_size)
        closure = make_closure(model, inputs, targets)
        opt = LLQR(model.parameters(), model=model, loss=loss, lr=1e-3, momentum=0.9, block_structure=structure,
                   divergence=args.divergence, update_preconditioner_every=10 ** 9, precond_steps=args.inner_steps,
                   verbose=False)
        step_ms = time_per_step(lambda: opt.step(closure), args.steps, args.warmup, device)  # step 0 refits (warmup)
        refit_ms = _time_refit(opt, inputs, targets, args.refit_repeats, device)
        for period in args.periods:
            amortised = step_ms + refit_ms / period
            rows.append((name, structure, period, base_ms, step_ms, refit_ms, amortised, amortised / base_ms))
    return rows


def main():
    parser = default_parser(__doc__.splitlines()[0])
    parser.set_defaults(problems=["resnet", "gpt"])
    parser.add_argument("--structures", nargs="+", default=["diagonal", "e-kfac"])
    parser.add_argument("--periods", nargs="+", type=int, default=[250, 1000])
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--divergence", default="ngd")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--refit-repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"LLQR overhead, device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"batch {args.batch_size}, {args.inner_steps} inner steps, divergence={args.divergence}")
    header = ("problem", "U", "T", "base ms/step", "LLQR ms/step", "ms/refit", "amortised ms/step", "ratio")
    print(" | ".join(header))
    for name in args.problems:
        for row in bench_problem(name, args, device):
            print(" | ".join([row[0], row[1], str(row[2])] + [f"{v:.2f}" for v in row[3:7]] + [f"{row[7]:.3f}x"]))


if __name__ == "__main__":
    main()
