"""PSGD step time and state size against SGD, measured in the same run on the same model and batch.

    python -m scripts.benchmarks.bench_psgd [--device cpu] [--steps 20] [--problems resnet gpt lstm]
    python -m scripts.benchmarks.bench_psgd --reference /path/to/preconditioned_stochastic_gradient_descent.py

For each problem (scripts/benchmarks/common.py) it times PSGD with each preconditioner, update probability 1.0
and 0.1, exact and finite-difference Hessian-vector products, against torch.optim.SGD (momentum 0.9) in
alternating windows (so that a shared machine's load drifts cancel), and prints ms/step, the ratio to SGD's
ms/step over the same windows, and the optimizer state's bytes over the parameters' bytes. With update
probability 0.1 the measured time depends on how many of the timed steps update the preconditioner (seeded, so
the same across runs); `amortised` gives 0.9·ratio(p=0) + 0.1·ratio(p=1) from two extra timings as a steadier
estimate. "newton" is skipped when its n×n state would exceed --newton-max-params² entries.
With --reference, the reference implementation's UVd (rank 10) and XMat (lixilinx/psgd_torch @ f0fa983; kept
outside the repository) are timed with the same settings, and ours/reference is printed.
"""

import importlib.util

import torch

from psgd import PSGD
from scripts.benchmarks.common import (default_parser, make_closure, make_problem, param_bytes, state_bytes,
                                       time_per_step)

PRECONDITIONERS = ("xmat", "lra", "diag", "newton", "kron")


def _paired(problem, device, make_optimizer, args, closure_style="protocol"):
    """Time an optimizer against SGD (momentum 0.9) on the same problem, alternating windows of `args.steps`
    steps of each, `args.repeats` times, so that load drifts on a shared machine hit both alike.
    Returns (ms/step, ms/step over SGD's ms/step, state bytes over parameter bytes)."""
    runs = []
    for make in (lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), make_optimizer):
        model, inputs, targets, _ = make_problem(problem, device)
        opt = make(model)
        closure = make_closure(model, inputs, targets)
        if make is make_optimizer and closure_style == "reference":
            closure = (lambda c: (lambda: c(backward=False)))(closure)
        runs.append((opt, closure, model))
    totals = [0.0, 0.0]
    for opt, closure, _ in runs:
        for _ in range(args.warmup):
            opt.step(closure)
    for _ in range(args.repeats):
        for i, (opt, closure, _) in enumerate(runs):
            totals[i] += time_per_step(lambda: opt.step(closure), args.steps, 0, device)
    opt, _, model = runs[1]
    return totals[1] / args.repeats, totals[1] / totals[0], state_bytes_any(opt) / param_bytes(model)


def state_bytes_any(opt):
    if isinstance(opt, torch.optim.Optimizer):
        return state_bytes(opt)
    # the reference's classes keep their state in attributes
    return sum(t.numel() * t.element_size() for t in vars(opt).values() if torch.is_tensor(t))


def _psgd(kind, prob, exact):
    return lambda model: PSGD(model.parameters(), preconditioner=kind, preconditioner_update_probability=prob,
                              exact_hessian_vector_product=exact, momentum=0.9, rng_seed=0, model=model)


def _load_reference(path):
    spec = importlib.util.spec_from_file_location("psgd_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_problem(problem, device, args, reference):
    """Yield the table's rows of one problem as they are measured."""
    sgd_ms, _, sgd_size = _paired(problem, device, lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
                                  args)
    yield problem, "sgd", "-", "-", sgd_ms, 1.0, sgd_size, ""
    n = sum(p.numel() for p in make_problem(problem, "cpu")[0].parameters())
    for kind in args.preconditioners:
        if kind == "newton" and n > args.newton_max_params:
            yield problem, kind, "-", "-", float("nan"), float("nan"), float("nan"), f"skipped: n={n}"
            continue
        for exact in (True, False):
            hvp = "exact" if exact else "fd"
            t1, r1, size = _paired(problem, device, _psgd(kind, 1.0, exact), args)
            yield problem, kind, hvp, 1.0, t1, r1, size, ""
            _, r0, _ = _paired(problem, device, _psgd(kind, 0.0, exact), args)
            tp, rp, _ = _paired(problem, device, _psgd(kind, 0.1, exact), args)
            yield problem, kind, hvp, 0.1, tp, rp, size, f"amortised 0.9·r(p=0) + 0.1·r(p=1) = {0.9 * r0 + 0.1 * r1:.2f}x"
            if reference is not None and kind in ("xmat", "lra"):
                yield from _reference_rows(problem, device, args, reference, kind, exact, {1.0: r1, 0.1: rp})


def _reference_rows(problem, device, args, reference, kind, exact, ours):
    for prob in (1.0, 0.1):
        def make(model, prob=prob):
            torch.manual_seed(0)
            cls = reference.UVd if kind == "lra" else reference.XMat
            return cls(model.parameters(), momentum=0.9, preconditioner_update_probability=prob,
                       exact_hessian_vector_product=exact)
        name, hvp = f"ref-{kind}", "exact" if exact else "fd"
        try:
            ms, ratio, size = _paired(problem, device, make, args, closure_style="reference")
        except RuntimeError as error:  # e.g. no double backward through fused attention kernels
            yield problem, name, hvp, prob, float("nan"), float("nan"), float("nan"), f"reference fails: {str(error)[:60]}"
            continue
        yield problem, name, hvp, prob, ms, ratio, size, f"ours/reference {ours[prob] / ratio:.2f}"


def main():
    parser = default_parser(__doc__.splitlines()[0])
    parser.add_argument("--reference", default=None, help="path of the reference preconditioned_stochastic_gradient_descent.py")
    parser.add_argument("--newton-max-params", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--preconditioners", nargs="+", default=list(PRECONDITIONERS))
    parser.add_argument("--repeats", type=int, default=4, help="windows of --steps steps, alternating with SGD's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reference = _load_reference(args.reference) if args.reference else None
    print(f"device {device}, {args.repeats} windows of {args.steps} timed steps alternating with SGD's, after "
          f"{args.warmup} warm-up steps; momentum 0.9; torch {torch.__version__}")
    header = f"{'problem':8} {'optimizer':10} {'hvp':5} {'prob':>4} {'ms/step':>9} {'x SGD':>6} {'state/params':>12}  note"
    print(header)
    print("-" * len(header))
    for problem in args.problems:
        for row in bench_problem(problem, device, args, reference):
            problem_, name, hvp, prob, ms, ratio, size, note = row
            print(f"{problem_:8} {name:10} {hvp:5} {prob!s:>4} {ms:9.1f} {ratio:6.2f} {size:12.2f}  {note}", flush=True)


if __name__ == "__main__":
    main()
