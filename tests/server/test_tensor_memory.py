"""The tensor-memory counter the benchmarks use on a CPU (server/tensor_memory.py)."""

from __future__ import annotations

import torch

from server.tensor_memory import PeakTensorMemory

MIB = 2**20


def test_counts_weights_and_live_storages_once_each():
    layer = torch.nn.Linear(1024, 1024, bias=False)  # 4 MiB of weights
    with torch.no_grad(), PeakTensorMemory(layer) as counter:
        assert counter.start == counter.current == 4 * MIB
        x = torch.ones(1024, 1024)  # 8 MiB alive
        y = layer(x)  # 12
        view = y.view(-1)  # a view: no new storage
        del x  # 8
        z = torch.ones(2048, 1024)  # 16: the peak
        del z, y, view  # 4: the weights again
        assert counter.current == 4 * MIB
    assert counter.peak == 16 * MIB
