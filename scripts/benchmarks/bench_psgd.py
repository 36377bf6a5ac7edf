"""PSGD step time and state size against SGD, measured in the same run on the same model and batch.

    python -m scripts.benchmarks.bench_psgd [--device cpu] [--steps 2] [--repeats 12] [--problems resnet gpt lstm]
        [--preconditioners xmat lra] [--hvp fd exact]
    python -m scripts.benchmarks.bench_psgd --reference /path/to/preconditioned_stochastic_gradient_descent.py

For each problem (scripts/benchmarks/common.py) every optimizer gets its own copy of the model and batch, and all
of them are timed in one process in --repeats rounds; in each round every PSGD configuration runs a block of
--steps steps between two blocks of SGD (momentum 0.9), and its ratio in that round is its ms/step over the mean
of the two SGD blocks (scripts/benchmarks/common.py `sandwiched_ratios`; on CPU the clock is the process's CPU
time). `x SGD` is the median of those ratios over the rounds, so load drifts and spikes on a shared machine move
it little; `sgd (control)`, a second SGD timed like the others, shows the noise floor (it should read 1.00).
`ms/step` is the median over blocks; `state/params` is the optimizer state's bytes over the parameters' bytes.

Each preconditioner is timed with update probability 0 (no step updates the preconditioner or computes an HVP),
1 (every step does) and 0.1. The p = 0.1 row's `x SGD` is the expected ratio 0.9·r(p=0) + 0.1·r(p=1) (a median
over rounds of a p = 0.1 run would depend on how many update steps the timed rounds happened to draw); its note
gives the ratio of total times measured directly at p = 0.1 and, for finite differences (which call the closure
twice on update steps), the fraction of the timed steps that updated. "newton" is skipped when its n×n state
would exceed --newton-max-params² entries.
With --reference, the reference implementation's UVd (rank 10) and XMat (lixilinx/psgd_torch @ f0fa983; kept
outside the repository) are timed in the same rounds, and ours/reference is printed.
"""

import importlib.util
import statistics

import torch

from psgd import PSGD
from scripts.benchmarks.common import (configure_malloc, default_parser, make_closure, make_problem, param_bytes,
                                       sandwiched_ratios, state_bytes)

PRECONDITIONERS = ("xmat", "lra", "diag", "newton", "kron")
PROBABILITIES = (0.0, 1.0, 0.1)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def _psgd(kind, prob, exact):
    return lambda model: PSGD(model.parameters(), preconditioner=kind, preconditioner_update_probability=prob,
                              exact_hessian_vector_product=exact, momentum=0.9, rng_seed=0, model=model)


def _reference(reference, kind, prob, exact):
    def make(model):
        torch.manual_seed(0)
        cls = reference.UVd if kind == "lra" else reference.XMat
        return cls(model.parameters(), momentum=0.9, preconditioner_update_probability=prob,
                   exact_hessian_vector_product=exact)
    return make


class _Run:
    """One optimizer on its own copy of a problem; counts closure calls (two on a finite-difference update step)."""

    def __init__(self, problem, device, make, reference_style=False):
        self.model, inputs, targets, _ = make_problem(problem, device)
        self.optimizer = make(self.model)
        closure = make_closure(self.model, inputs, targets)
        self.calls = 0

        def counted(backward=True):
            self.calls += 1
            return closure(backward=backward)

        self.closure = (lambda: counted(backward=False)) if reference_style else counted

    def step(self):
        self.optimizer.step(self.closure)

    def state_ratio(self):
        opt = self.optimizer
        if isinstance(opt, torch.optim.Optimizer):
            size = state_bytes(opt)
        else:  # the reference's classes keep their state in attributes
            size = sum(t.numel() * t.element_size() for t in vars(opt).values() if torch.is_tensor(t))
        return size / param_bytes(self.model)


def _configs(problem, args, reference):
    """(name, hvp, prob, make, reference_style) of every optimizer timed on `problem`."""
    configs = [("sgd", "-", "-", _sgd, False), ("sgd (control)", "-", "-", _sgd, False)]
    n = sum(p.numel() for p in make_problem(problem, "cpu")[0].parameters())
    for kind in args.preconditioners:
        if kind == "newton" and n > args.newton_max_params:
            continue
        for hvp in args.hvp:
            for prob in PROBABILITIES:
                configs.append((kind, hvp, prob, _psgd(kind, prob, hvp == "exact"), False))
                if reference is not None and kind in ("xmat", "lra"):
                    configs.append((f"ref-{kind}", hvp, prob, _reference(reference, kind, prob, hvp == "exact"), True))
    return configs, n


def bench_problem(problem, device, args, reference):
    """The table's rows of one problem."""
    configs, n = _configs(problem, args, reference)
    runs = {}
    for name, hvp, prob, make, reference_style in configs:
        run = _Run(problem, device, make, reference_style)
        try:
            for _ in range(args.warmup):
                run.step()
        except RuntimeError as error:  # e.g. the reference without double backward through fused attention
            print(f"{problem:8} {name:13} {hvp:5} {prob!s:>4} fails: {str(error)[:70]}")
            continue
        run.calls = 0
        runs[(name, hvp, prob)] = run
    base = ("sgd", "-", "-")
    times, ratios = sandwiched_ratios({key: run.step for key, run in runs.items()},
                                      {key: base for key in runs if key != base}, args.repeats, args.steps, device)
    median = {key: statistics.median(r) for key, r in ratios.items()}
    median[base] = 1.0
    rows = {}
    for key, run in runs.items():
        name, hvp, prob = key
        ratio, note = median[key], ""
        if prob == 0.1 and (name, hvp, 0.0) in runs and (name, hvp, 1.0) in runs:
            ratio = 0.9 * median[(name, hvp, 0.0)] + 0.1 * median[(name, hvp, 1.0)]
            note = f"measured at p=0.1: {statistics.mean(times[key]) / statistics.mean(times[base]):.2f}x"
            if hvp == "fd":
                steps = args.repeats * args.steps
                note += f" ({run.calls - steps}/{steps} steps updated)"
        rows[key] = [problem, name, hvp, prob, statistics.median(times[key]), ratio, run.state_ratio(), note]
    for key, row in rows.items():
        if row[1].startswith("ref-") and (row[1][4:], key[1], key[2]) in rows:
            row[7] += f"{'; ' if row[7] else ''}ours/reference {rows[(row[1][4:], key[1], key[2])][5] / row[5]:.2f}"
    if n > args.newton_max_params and "newton" in args.preconditioners:
        rows["newton"] = [problem, "newton", "-", "-", float("nan"), float("nan"), float("nan"), f"skipped: n={n}"]
    return list(rows.values())


def _load_reference(path):
    spec = importlib.util.spec_from_file_location("psgd_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = default_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=2)
    parser.add_argument("--reference", default=None,
                        help="path of the reference preconditioned_stochastic_gradient_descent.py")
    parser.add_argument("--newton-max-params", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--preconditioners", nargs="+", default=list(PRECONDITIONERS))
    parser.add_argument("--hvp", nargs="+", choices=("exact", "fd"), default=["exact", "fd"])
    parser.add_argument("--repeats", type=int, default=12, help="rounds of --steps steps of each optimizer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    malloc = configure_malloc(args)
    reference = _load_reference(args.reference) if args.reference else None
    print(f"device {device}, {args.repeats} rounds of {args.steps} steps per optimizer between SGD's, after "
          f"{args.warmup} warm-up steps; momentum 0.9; threads {torch.get_num_threads()}; malloc {malloc}; "
          f"torch {torch.__version__}")
    header = (f"{'problem':8} {'optimizer':13} {'hvp':5} {'prob':>4} {'ms/step':>9} {'x SGD':>6} {'state/params':>12}"
              "  note")
    print(header)
    print("-" * len(header))
    for problem in args.problems:
        for problem_, name, hvp, prob, ms, ratio, size, note in bench_problem(problem, device, args, reference):
            print(f"{problem_:8} {name:13} {hvp:5} {prob!s:>4} {ms:9.1f} {ratio:6.2f} {size:12.2f}  {note}", flush=True)


if __name__ == "__main__":
    main()
