"""The memory a hypergradient method holds, counted in tensors rather than read from the allocator.

The claims the methods make about memory (flat in T, √T checkpoints, one step's graph) are about what autograd
saves and which states stay alive; the allocator's figures blur them with caching and fragmentation. The tests
and the benchmarks measure them with the one meter below.
"""

import weakref

import torch
import torch.autograd.forward_ad as fwAD


class SavedBytes:
    """Peak bytes of the distinct storages kept alive by the tensors passed to `track` (a storage counts once,
    however many tensors share it, from its first tracked tensor until its last one is freed); storages in
    `ignore` (e.g. the problem's data) never count.

    Use as `torch.autograd.graph.saved_tensors_hooks(meter.track, lambda x: x)`, and wrap the states a step
    returns in `meter.track` to count them too."""

    def __init__(self, ignore=()):
        self.ignore, self.holders, self.live, self.peak = set(ignore), {}, 0, 0

    def track(self, x: torch.Tensor) -> torch.Tensor:
        for part in fwAD.unpack_dual(x):  # a dual tensor holds its primal and its tangent
            if part is None or part._is_zerotensor():  # a zero tangent has no storage
                continue
            key, size = part.untyped_storage().data_ptr(), part.untyped_storage().nbytes()
            if key in self.ignore:
                continue
            if not self.holders.get(key):
                self.live += size
                self.peak = max(self.peak, self.live)
            self.holders[key] = self.holders.get(key, 0) + 1
            weakref.finalize(x, self._release, key, size)
        return x

    def _release(self, key: int, size: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            self.live -= size
