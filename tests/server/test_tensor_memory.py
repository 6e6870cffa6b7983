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


def test_moves_take_a_module_off_the_device_and_back_whichever_device_is_named():
    """On a CPU the device is the CPU: IdleWeights parks to "cpu" and unparks to the engine's device, "cpu" too;
    each move goes the other way (parked, then back), as they would on a GPU."""
    layer = torch.nn.Linear(1024, 1024, bias=False)  # 4 MiB
    counter = PeakTensorMemory(layer)
    cpu = torch.device("cpu")
    counter.move(layer, cpu)  # parked
    assert counter.current == 0
    counter.move(layer, cpu)  # back for the decode (the engine's device is the CPU)
    assert counter.current == 4 * MIB
    counter.move(layer, cpu)
    counter.move(layer, torch.device("cuda"))  # the same on a GPU's names
    assert counter.current == counter.peak == 4 * MIB
