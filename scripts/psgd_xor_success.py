"""Delayed-XOR success rate of PSGD over seeds (paper Table 8 / App. E.5; psgd_notes.md §7).

    python -m scripts.psgd_xor_success --seq-len 32 --seeds 1 2 3 4 5 --preconditioner lra

A run succeeds as soon as a training batch's loss is below 0.1 (the reference demo's criterion) within
--max-iters iterations (the paper: 100,000). Defaults are the reference demo's: LRA rank 10, lr 0.01,
lr_preconditioner 0.01, clip 1.0, no momentum, exact Hessian-vector products, batch 128, a fresh batch
every iteration. Prints one line per seed and the success rate.
"""

import argparse
import json
import time

import torch

from psgd import PSGD
from tests.psgd.xor_task import build, logistic_loss, xor_batch


def run_seed(seed, args):
    model, data_rng = build(seed)
    opt = PSGD(model.parameters(), preconditioner=args.preconditioner, rank=args.rank, lr=args.lr,
               lr_preconditioner=args.lr_preconditioner, momentum=args.momentum, grad_clip_max_norm=args.clip,
               preconditioner_update_probability=args.update_probability,
               exact_hessian_vector_product=not args.finite_differences)
    start = time.perf_counter()
    loss = float("nan")
    for iteration in range(1, args.max_iters + 1):
        x, y = xor_batch(data_rng, args.batch_size, args.seq_len)
        loss = opt.step(lambda: logistic_loss(model, x, y)).item()
        if loss < 0.1:
            return {"seed": seed, "solved": True, "iterations": iteration, "loss": loss,
                    "ms_per_iter": 1000 * (time.perf_counter() - start) / iteration}
    return {"seed": seed, "solved": False, "iterations": args.max_iters, "loss": loss,
            "ms_per_iter": 1000 * (time.perf_counter() - start) / args.max_iters}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--max-iters", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--preconditioner", default="lra")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lr-preconditioner", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--update-probability", type=float, default=1.0)
    parser.add_argument("--finite-differences", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args))
        print(json.dumps(results[-1]), flush=True)
    solved = [r for r in results if r["solved"]]
    print(f"L={args.seq_len} {args.preconditioner}: solved {len(solved)}/{len(results)} "
          f"(iterations of solved runs: {sorted(r['iterations'] for r in solved)})", flush=True)


if __name__ == "__main__":
    main()
