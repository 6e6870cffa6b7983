"""Peak tensor memory on any device: what torch.cuda.max_memory_allocated reports on a GPU, counted on the CPU too.

A GPU's allocated-memory peak is the figure a card's size must hold; a CPU process's resident size is not (it
holds the Python heap, libraries, freed-but-kept pages). This counts the bytes of tensor storages alive at once:
the modules' weights when the count starts, plus every storage an operator creates, until it is freed. Memory an
operator uses only inside its kernel (workspaces) is not seen; on a GPU, cuDNN's would add to the real figure.
Used by the benchmarks (server/bench.py) to measure the full-size model's memory on a machine without a GPU.
"""

from __future__ import annotations

import weakref
from itertools import chain

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class PeakTensorMemory(TorchDispatchMode):
    """Context manager: `current` and `peak` bytes of live tensor storages, the given modules' included.

    `float32_as`: count float32 storages at that dtype's size, to measure a half-precision job from a float32
    run on a CPU without half-precision arithmetic (bf16 there is software-emulated, ~20× slower). It stands for
    the half-precision job where its tensors are half precision, i.e. all but a few: the ones that stay float32
    in such a job (the decoded frames, the time embedding) are counted at half their size."""

    def __init__(self, *modules: torch.nn.Module, float32_as: torch.dtype | None = None):
        super().__init__()
        self._scale = 1.0 if float32_as is None else torch.empty((), dtype=float32_as).element_size() / 4
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = self.peak = self.window_peak = 0
        self._away: set[int] = set()  # modules counted as off the device (move)
        for module in modules:
            for tensor in chain(module.parameters(), module.buffers()):
                self._count(tensor)
        self.start = self.current

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._sizes or storage.device.type == "meta":
            return
        nbytes = storage.nbytes()
        if tensor.dtype == torch.float32:
            nbytes = int(nbytes * self._scale)
        self._sizes[storage] = nbytes
        self.current += nbytes
        self._rise()
        weakref.finalize(storage, self._freed, nbytes)

    def _rise(self) -> None:
        self.peak = max(self.peak, self.current)
        self.window_peak = max(self.window_peak, self.current)

    def _freed(self, nbytes: int) -> None:
        self.current -= nbytes

    def mark(self) -> int:
        """The peak since the last mark (or the start), e.g. one denoising step's; starts the next window."""
        peak, self.window_peak = self.window_peak, self.current
        return peak

    def move(self, module: torch.nn.Module, device: torch.device) -> None:
        """Count `module`'s weights as leaving the device or coming back: on a CPU-only machine the weights stay
        where they are, so a lever that moves idle weights off a GPU (IdleWeights) is measured by moving them in
        the count. There the device is the CPU too, so `device` cannot say which way: each call moves the module
        the other way (a module's first move takes it off the device). Until 2026-12-08 a move to the CPU counted
        as leaving whatever the device, so on a CPU the VAE's return to decode was counted as a second departure."""
        away = id(module) in self._away
        if away:
            self._away.discard(id(module))
        else:
            self._away.add(id(module))
        sign = 1 if away else -1
        tensors = chain(module.parameters(), module.buffers())
        self.current += sign * sum(self._sizes.get(t.untyped_storage(), 0) for t in tensors)
        self._rise()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf)
        return out
