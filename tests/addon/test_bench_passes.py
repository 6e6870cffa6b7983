"""`python -m sparsectrl_blender.bench_passes` runs end to end and writes a well-formed BENCHMARKS.md section;
the Generate it times leaves the PNGs to the job thread. No timings are asserted (the numbers are the
benchmark's, not the tests')."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

bpy = pytest.importorskip("bpy")

from sparsectrl_blender.blender import generation, passes  # noqa: E402
from sparsectrl_blender.core.request import GenerationSettings  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402

NUMBER = r"\d+\.\d{3}"


def test_the_benchmark_command_writes_a_section(tmp_path):
    out = tmp_path / "BENCH.md"
    args = ["--frames", "1", "--size", "64x36", "--repeats", "1", "--depth-every-frame", "3", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "sparsectrl_blender.bench_passes", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"appended to {out}" in run.stdout
    text = out.read_text()
    assert text.startswith("# Benchmarks\n")
    heading = re.findall(r"^### .*$", text, re.M)
    assert len(heading) == 1
    assert re.fullmatch(
        r"### \d{4}-\d\d-\d\d · CPU \(.+, \d+ cores\) · Blender \d+\.\d+\.\d+.* · passes · 64×36, 1 keyframe, "
        r"median of 1",
        heading[0],
    ), heading[0]
    assert f"Command: `python -m sparsectrl_blender.bench_passes {' '.join(args)}`" in text
    assert "| pass | ours s/keyframe | bare s/keyframe | ratio |" in text
    for name in ("depth", "lineart", "rgb", "lineart vs Freestyle"):
        row = re.search(rf"^\| {name} \| ({NUMBER}) \| ({NUMBER}) \| (\d+\.\d\d) \|$", text, re.M)
        assert row, name
        ours, bare, ratio = map(float, row.groups())
        low, high = (ours - 0.0005) / (bare + 0.0005), (ours + 0.0005) / (bare - 0.0005)  # 3 decimals shown
        assert ours > 0 and bare > 0 and low - 0.005 <= ratio <= high + 0.005
    assert re.search(r"^Generate \(lineart, 1 keyframe at 64×64\): the operator blocks Blender's UI for ", text, re.M)
    stages = re.findall(rf"^\| ([a-z_ ()]+) \| ({NUMBER}) \| \d+ % \|$", text, re.M)
    assert {"render", "scene copy", "cleanup", "operator (rest)"} <= {name for name, _ in stages}
    assert "png" not in {name for name, _ in stages}  # made in the job thread, not while the UI waits
    depth = re.search(
        rf"^Depth every frame \(3 generated frames at 64×64, no keyframes\): .* \*\*({NUMBER}) s per generated frame",
        text,
        re.M,
    )
    assert depth and float(depth.group(1)) > 0
    per_frame = re.findall(rf"^\| ([a-z_ ()]+) \| ({NUMBER}) \| ({NUMBER}) \|$", text, re.M)
    # #29: the same Generates stepped, a pass render per tick: the longest block, beside the one block before.
    stepped = re.findall(
        rf"^Stepped, .*: the longest block \*\*({NUMBER}) s\*\* \(its longest render {NUMBER} s\), all (\d+) blocks "
        r"(\d+\.\d\d) s; before, in one "
        r"block: (\d+\.\d\d) s\.$",
        text,
        re.M,
    )
    # the call, the renders, (the processing,) the cleanup, the job sent
    assert [int(t) for _, t, _, _ in stepped] == [1 + 1 + 1 + 1, 1 + 3 + 1 + 1 + 1]
    assert all(0 < float(longest) <= float(total) for longest, _, total, _ in stepped)
    assert {"render", "scene copy"} <= {name for name, _, _ in per_frame}


def test_the_prompt_is_checked_before_anything_is_rendered(monkeypatch):
    build_shot(start=1, end=24, markers=(1, 24), resolution=(64, 64))

    def no_render(self, modality, frames):
        raise AssertionError("rendered before the settings were checked")

    monkeypatch.setattr(passes.PassRenderer, "render", no_render)
    monkeypatch.setattr(passes.PassRenderer, "render_steps", no_render)
    with pytest.raises(ValueError, match="write a prompt"):
        generation.prepare(bpy.context.scene, GenerationSettings(prompt=" ", size=64))


def test_prepare_leaves_the_pngs_to_encode():
    scene = build_shot(start=1, end=24, markers=(1, 24), resolution=(64, 64))
    prepared = generation.prepare(scene, GenerationSettings(prompt="boxes", size=64))
    assert sorted(prepared.images) == [1, 24] and prepared.passes == {} and prepared.body["keyframes"] == []
    stages = set(prepared.stage_seconds)
    assert {"keyframes", "scene copy", "frame_set", "render", "read", "process", "cleanup"} <= stages
    assert "png" not in stages
    prepared.encode()
    assert sorted(prepared.passes) == [1, 24]
    assert [k["output_index"] for k in prepared.body["keyframes"]] == [0, 23]
