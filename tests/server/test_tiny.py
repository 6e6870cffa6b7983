"""The tiny model's builders under concurrency: Ray slots of nodes sharing one data folder build at once."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pytest

from server.engine.tiny import TINY_CONTROLNET_VERSION, _build_folder, _publish, build_tiny_controlnet

ROOT = Path(__file__).resolve().parents[2]


def _build(folder: str, unet: str) -> None:
    sys.path.insert(0, str(ROOT))
    from server.engine.tiny import build_tiny_controlnet

    build_tiny_controlnet(Path(folder), Path(unet))


def test_a_build_published_second_gives_way_to_the_first(tmp_path):
    folder = tmp_path / "depth"
    first, second = _build_folder(folder), _build_folder(folder)
    assert first != second  # each build writes into its own folder
    for tmp, text in ((first, "first"), (second, "second")):
        (tmp / "tiny_controlnet.json").write_text(f'{{"version": "{TINY_CONTROLNET_VERSION}", "by": "{text}"}}')
    _publish(first, folder, "tiny_controlnet.json", TINY_CONTROLNET_VERSION)
    _publish(second, folder, "tiny_controlnet.json", TINY_CONTROLNET_VERSION)
    assert '"first"' in (folder / "tiny_controlnet.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["depth"]  # no .partial left behind


def test_a_stale_folder_in_the_way_is_not_taken_for_a_finished_build(tmp_path):
    folder = tmp_path / "depth"
    folder.mkdir()
    (folder / "tiny_controlnet.json").write_text('{"version": "0"}')
    tmp = _build_folder(folder)
    (tmp / "tiny_controlnet.json").write_text(f'{{"version": "{TINY_CONTROLNET_VERSION}"}}')
    with pytest.raises(OSError):
        _publish(tmp, folder, "tiny_controlnet.json", TINY_CONTROLNET_VERSION)


@pytest.mark.slow
def test_three_processes_building_the_controlnet_at_once_all_succeed(tmp_path, tiny_root):
    folder, unet = tmp_path / "controlnets" / "depth", tiny_root / "base" / "unet"
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_build, args=(str(folder), str(unet))) for _ in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=180)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert [p.name for p in folder.parent.iterdir()] == ["depth"]
    assert build_tiny_controlnet(folder, unet) == folder  # up to date: kept as it is
