"""Where PSGD draws its random numbers (psgd_notes.md §2.2).

Paper mode (`seed=None`) draws exactly as the reference does: the update-or-not coin (R1) and LRA's
rebalance/U-or-V coins (R3, R4) from the default CPU generator, the probe vectors v (R2) with
`torch.randn_like(p)`, i.e. from the default generator of the parameter's device. Resuming such a run
exactly needs the caller to restore `torch.get_rng_state()` (and the CUDA states) with the checkpoint.

With an integer `seed` the optimizer owns private generators (one CPU, one per parameter device). Its draws
then never collide with the closure's (a harness closure that restores the global RNG state at each call
would otherwise make the optimizer redraw the same numbers every step), and `state_dict()` carries them,
so a resumed run continues exactly without touching the global RNG. Our choice; the reference has no such mode.
"""

import torch


class RandomSource:
    def __init__(self, seed=None):
        self.seed = seed
        self._generators = {}
        if seed is not None:
            self._generators["cpu"] = torch.Generator(device="cpu").manual_seed(_mix(seed, "cpu"))

    def _generator(self, device):
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(_mix(self.seed, key))
        return self._generators[key]

    def uniform(self):
        """One U(0, 1) draw on the CPU (reference: `torch.rand([])`), as a 0-dim tensor."""
        if self.seed is None:
            return torch.rand([])
        return torch.rand([], generator=self._generators["cpu"])

    def randn_like(self, p):
        """N(0, 1) of p's shape, dtype and device (reference: `torch.randn_like(p)`)."""
        if self.seed is None:
            return torch.randn_like(p)
        return torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=self._generator(p.device))

    def randn(self, shape, dtype, device):
        """N(0, 1) of the given shape (reference: `torch.randn(n, r, dtype=..., device=...)`)."""
        if self.seed is None:
            return torch.randn(*shape, dtype=dtype, device=device)
        return torch.randn(*shape, dtype=dtype, device=device, generator=self._generator(device))

    def state(self):
        """The private generators' states (empty in paper mode, where the caller owns the RNG)."""
        return {key: gen.get_state() for key, gen in self._generators.items()}

    def load_state(self, states):
        for key, value in states.items():
            device = torch.device(key)
            if key not in self._generators:
                self._generators[key] = torch.Generator(device=device)
            self._generators[key].set_state(value.cpu())


def _mix(seed, key):
    """A generator seed derived from `seed` and a device name, scrambled so that the stream differs from the one
    `torch.manual_seed(seed)` gives the model's initialisation (our choice: a 64-bit LCG step, kept below 2⁶³)."""
    value = int(seed) * 6364136223846793005 + 1442695040888963407 + sum((i + 1) * ord(c) for i, c in enumerate(key))
    return value % (2**63 - 1)
