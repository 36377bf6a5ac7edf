"""Throughput (samples/s) and peak memory of one training step (forward, backward, AdamW) for each paper model.

    python -m scripts.benchmarks.bench_models                       # every model, CPU batch sizes, 3 timed steps
    python -m scripts.benchmarks.bench_models --models resnet18 gpt2 --device cuda --paper-batch

Each model runs in its own subprocess, so that the peak memory is its own: on CUDA the peak allocated memory
(torch.cuda.max_memory_allocated), on CPU the growth of the process's peak resident set over what it held after
building the model (`ru_maxrss`, so activations and optimizer state, not the weights). Inputs are random tensors of
the paper's shapes. A "sample" is an image, a sequence, or a sentence pair.
"""

import argparse
import multiprocessing
import resource
import time

import torch

from harness.models import MODELS

CIFAR10 = {"num_classes": 10, "in_channels": 3, "image_size": 32}
IMAGENET = {"num_classes": 1000, "in_channels": 3, "image_size": 224}


def tokens(vocab, length):
    return lambda b: torch.randint(vocab, (b, length))


def seq2seq(b):
    return torch.randint(4, 8000, (b, 30)), torch.randint(4, 6600, (b, 32))


# name: (registry name, dataset info, config keys, inputs(batch), CPU batch, paper batch)
BENCHMARKS = {
    "resnet18": ("resnet18", CIFAR10, {}, lambda b: torch.randn(b, 3, 32, 32), 16, 128),
    "vgg16_bn": ("vgg16_bn", CIFAR10, {}, lambda b: torch.randn(b, 3, 32, 32), 16, 128),
    "wide_resnet28_10": ("wide_resnet", CIFAR10, {}, lambda b: torch.randn(b, 3, 32, 32), 4, 128),
    "resnet50": ("resnet50", IMAGENET, {}, lambda b: torch.randn(b, 3, 224, 224), 2, 256),
    "vit_s16": ("vit_s16", IMAGENET, {}, lambda b: torch.randn(b, 3, 224, 224), 2, 256),
    "nanogpt_shakespeare": ("nanogpt", {"vocab_size": 65, "seq_len": 256}, {}, tokens(65, 256), 4, 64),
    "gpt2_124m": ("nanogpt", {"vocab_size": 50257, "seq_len": 1024}, dict(n_layer=12, n_head=12, n_embd=768, bias=True, dropout=0.0),
                  tokens(50257, 1024), 1, 12),
    "lstm_lm_3layer": ("lstm_lm", {"vocab_size": 10000, "seq_len": 70}, {}, tokens(10000, 70), 4, 20),
    "transformer_iwslt": ("transformer_iwslt_de_en", {"src_vocab_size": 8848, "tgt_vocab_size": 6632}, {}, seq2seq, 8, 128),
    "grokking": ("grokking_transformer", {"vocab_size": 99, "num_classes": 97, "seq_len": 4}, {}, tokens(97, 4), 512, 512),
}


def _max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports kB


def measure(name, device, batch, steps, queue):
    """Build, warm up once, time `steps` training steps; put (samples/s, peak MB, parameters) on the queue."""
    torch.manual_seed(0)
    registry_name, info, keys, make_inputs, _, _ = BENCHMARKS[name]
    model = MODELS[registry_name](info, **keys).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = make_inputs(batch)
    inputs = tuple(t.to(device) for t in inputs) if isinstance(inputs, tuple) else inputs.to(device)
    baseline = _max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(inputs).float().square().mean().backward()
        optimizer.step()

    step()  # warm-up (allocates the optimizer state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _max_rss_mb() - baseline
    elapsed = time.perf_counter() - started
    queue.put((batch * steps / elapsed, peak, sum(p.numel() for p in model.parameters())))


def run_isolated(name, device, batch, steps, threads):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, str(device), batch, steps, threads, queue))
    process.start()
    process.join()
    return queue.get() if process.exitcode == 0 else None


def _child(name, device, batch, steps, threads, queue):
    if threads:
        torch.set_num_threads(threads)
    measure(name, torch.device(device), batch, steps, queue)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--paper-batch", action="store_true", help="use the papers' batch sizes (default: small CPU batches)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{args.steps} timed steps after one warm-up, AdamW")
    print(f"{'model':<22}{'params':>14}{'batch':>7}{'samples/s':>12}{'peak MB':>10}")
    for name in args.models:
        batch = BENCHMARKS[name][5] if args.paper_batch else BENCHMARKS[name][4]
        result = run_isolated(name, device, batch, args.steps, args.threads)
        if result is None:
            print(f"{name:<22}{'failed (out of memory?)':>43}")
            continue
        rate, peak, params = result
        print(f"{name:<22}{params:>14,}{batch:>7}{rate:>12.2f}{peak:>10.0f}")


if __name__ == "__main__":
    main()
