"""Data parallelism across processes started by torchrun (`torchrun --nproc_per_node=N train.py ...`).

Design (the same for every optimizer, so the loop never branches on one):
- `dataset.batch_size` is the global batch; rank r trains on the r-th of N equal shards of it.
- After `loss.backward()` the closure averages the gradients over ranks (all-reduce), so SGD and AdamW
  with per-rank batch B compute exactly what one process computes with batch N·B.
- Optimizers that differentiate the loss themselves (PSGD's Hessian-vector products through
  `closure(backward=False)`) or that gather curvature statistics from their own rank's activations
  (K-FAC, Shampoo's and LLQR's factors) would drift apart. So after every step, with
  `trainer.ddp_sync=broadcast` (the default), rank 0's parameters, buffers and optimizer state are
  broadcast to every rank: the curvature is computed on rank 0's shard and broadcast. Every rank then
  holds the same parameters and the same preconditioner after every step. `trainer.ddp_sync=none` skips
  the broadcast for optimizers that stay in sync by themselves (plain SGD/AdamW), saving one broadcast.
- Only rank 0 logs, writes checkpoints and the summary.
"""

import os

import torch
import torch.distributed as dist


class Distributed:
    def __init__(self, rank=0, world_size=1, local_rank=0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @classmethod
    def from_environment(cls, device_name):
        """Join the process group torchrun describes in the environment (a no-op for one process)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank, world_size, local_rank)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world_size > 1

    def device(self, device):
        """This rank's device: cuda:<local_rank> when training on CUDA."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, batch):
        """This rank's equal share of a batch (a tensor, or a tuple/list/dict of tensors) along dim 0."""
        if not self.active:
            return batch
        if isinstance(batch, torch.Tensor):
            if batch.shape[0] % self.world_size:
                raise ValueError(f"the batch of {batch.shape[0]} does not split into {self.world_size} equal shards")
            size = batch.shape[0] // self.world_size
            return batch[self.rank * size : (self.rank + 1) * size]
        if isinstance(batch, dict):
            return {key: self.shard(value) for key, value in batch.items()}
        return type(batch)(self.shard(value) for value in batch)

    def average_gradients(self, model):
        if not self.active:
            return
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def mean(self, value):
        """The mean over ranks of a float (the logged loss, so that every rank takes the same decisions)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor) / self.world_size

    def broadcast_training_state(self, model, optimizer):
        """Rank 0's parameters, buffers and every tensor of the optimizer state, to every rank."""
        if not self.active:
            return
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
        for state in optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.numel() > 0:
                    dist.broadcast(value, src=0)

    def parameters_agree(self, model):
        """True when every rank holds exactly rank 0's parameters (recorded in the summary)."""
        if not self.active:
            return True
        same = torch.tensor([1], dtype=torch.int64, device=next(model.parameters()).device)
        for p in model.parameters():
            reference = p.detach().clone()
            dist.broadcast(reference, src=0)
            same &= int(torch.equal(reference, p.detach()))
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        return bool(same.item())

    def close(self):
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
