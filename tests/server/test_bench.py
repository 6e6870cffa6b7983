"""The benchmark command's smoke run (the tiny model): it runs and writes its table. Not a timed test."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def bench(data_dir, out_file, *args: str) -> subprocess.CompletedProcess:
    """`python -m server.bench ARGS` on the tiny model, writing to out_file; fails the test on a bad exit."""
    cmd = [sys.executable, "-m", "server.bench", *args, "--arch", "tiny", "--data-dir", str(data_dir)]
    out = subprocess.run([*cmd, "--out", str(out_file)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_memory_benchmark_smoke_run_writes_a_table(data_dir_with_tiny, tmp_path):
    out_file = tmp_path / "BENCHMARKS.md"
    bench(data_dir_with_tiny, out_file, "memory", "--frames", "16,40", "--size", "64", "--diffusers")
    text = out_file.read_text()
    assert "torch " in text and "diffusers " in text and "· memory · tiny-size architecture, 64×64" in text
    assert "| frames | windows | peak allocated (MiB) | of which weights (MiB) | peak RSS (MiB) |" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| 16 |", "| 40 |"))]
    assert len(rows) == 2 and rows[1][1] == "3"  # 40 frames: three 16-frame windows
    allocated, weights = float(rows[0][2]), float(rows[0][3])
    assert 0 < weights < allocated  # counted tensors: the weights, then the job's own
    assert rows[0][-2] != "—" and rows[1][-2:] == ["—", "— |"]  # diffusers where one window holds the clip


def test_speed_benchmark_smoke_run_compares_ours_with_bare_diffusers(data_dir_with_tiny, tmp_path):
    out_file = tmp_path / "BENCHMARKS.md"
    args = ("--frames", "8", "--size", "64", "--steps", "3", "--repeats", "1")
    bench(data_dir_with_tiny, out_file, "speed", *args)
    text = out_file.read_text()
    assert "| run | s/step | total s | peak (MiB) | achieved TFLOP/s |" in text
    assert "| ours |" in text and "| diffusers |" in text and "ours/diffusers time ratio" in text
    # A draft: the request [draft] resolves it to (the tiny model's draft module: LCM, its steps and guidance).
    bench(data_dir_with_tiny, out_file, "speed", *args, "--quality", "draft")
    assert "draft of 8×64² run at 64², lcm, guidance 1, 3 steps" in out_file.read_text()


def test_train_benchmark_smoke_run_writes_a_row(data_dir_with_tiny, tmp_path):
    out_file = tmp_path / "BENCHMARKS.md"
    out = bench(data_dir_with_tiny, out_file, "train", "--frames", "8", "--size", "64", "--steps", "2")
    text = out_file.read_text()
    assert "· train · tiny-size architecture, batch 1 × 8×64², mixed precision no" in text
    assert "| s/step | clips/s | peak (MiB) | achieved TFLOP/s | losses |" in text
    assert "clips/s" in out.stdout


def test_levers_benchmark_compares_lever_sets_with_the_first(data_dir_with_tiny, tmp_path):
    out_file = tmp_path / "BENCHMARKS.md"
    sets = "none;release,chunk,sequential,park"
    bench(data_dir_with_tiny, out_file, "levers", "--frames", "8", "--size", "64", "--steps", "2", "--sets", sets)
    text = out_file.read_text()
    assert "· memory levers · tiny-size architecture, 8×64², 2 step(s), float32, CFG on" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| none |", "| release + "))]
    assert [r[0] for r in rows] == ["| none", "| release + chunk + sequential + park"]
    (none, levered) = rows
    assert len(none[3].split(", ")) == 3  # two steps, then the decode
    assert float(levered[1]) < float(none[1])  # peak allocated falls
    assert none[5] == "1.000" and float(levered[5]) > 1  # sequential CFG computes the condition embedding twice
    assert int(levered[-1].rstrip(" |")) <= 2  # frames move by rounding only


def test_levers_benchmark_with_a_depth_controlnet_on_every_frame(data_dir_with_tiny, tmp_path):
    """#16 item 5's measurement: the same job plus the depth ControlNet, its weights and FLOPs counted."""
    out_file = tmp_path / "BENCHMARKS.md"
    args = ("levers", "--frames", "8", "--size", "64", "--steps", "2", "--sets", "none")
    bench(data_dir_with_tiny, out_file, *args)
    bench(data_dir_with_tiny, out_file, *args, "--depth")
    text = out_file.read_text()
    assert text.count("line-art keyframes + depth ControlNet on every frame") == 1 and "--sets none --depth" not in text
    assert '--dtype auto --depth --sets "none"`' in text  # the lever sets run, when not the default ones
    plain, depth = [line.split(" | ") for line in text.splitlines() if line.startswith("| none |")]
    # The tiny ControlNet weighs under 1 MiB and 0.00 TFLOP in the table's rounding: the full-size run's rows
    # (BENCHMARKS.md) show what it adds; here the job ran with it, peaking no lower.
    assert float(depth[1]) >= float(plain[1]) > 0


def test_levers_benchmark_with_a_reference_counts_the_image_encoder_while_it_encodes(data_dir_with_tiny, tmp_path):
    """#30 item 3's measurement: the job with a reference beside the keyframes and the depth ControlNet; the image
    encoder is not in the weights (off the device), its bytes come and go in the first step's window."""
    out_file = tmp_path / "BENCHMARKS.md"
    args = ("levers", "--frames", "8", "--size", "64", "--steps", "2", "--sets", "none", "--depth")
    bench(data_dir_with_tiny, out_file, *args)
    bench(data_dir_with_tiny, out_file, *args, "--reference")
    text = out_file.read_text()
    assert text.count("+ a reference (IP-Adapter plus, two images)") == 1 and "--depth --reference" in text
    plain, looked = [line.split(" | ") for line in text.splitlines() if line.startswith("| none |")]
    # The tiny encoder and adapter weigh under 1 MiB (the table's rounding): the full-size row (BENCHMARKS.md) shows
    # what they add; here the job ran with them, its weights and peak no lower.
    assert float(looked[2]) >= float(plain[2]) and float(looked[1]) >= float(plain[1]) > 0


def test_flops_benchmark_counts_a_final_and_both_drafts(data_dir_with_tiny, tmp_path):
    out_file = tmp_path / "BENCHMARKS.md"
    bench(data_dir_with_tiny, out_file, "flops", "--frames", "8", "--size", "128", "--steps", "25")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in out_file.read_text().splitlines()}
    assert rows["| final"][1] == "8×128², 25 steps"
    assert "run at 64², ddim" in rows["| draft (no draft module)"][1]
    assert "lcm, guidance 1, 4 steps" in rows["| draft (draft motion module)"][1]
    assert float(rows["| draft (draft motion module)"][-1].rstrip(" |")) <= 1 / 8


def test_preview_benchmark_counts_a_preview_beside_a_step(data_dir_with_tiny, tmp_path):
    out_file = tmp_path / "BENCHMARKS.md"
    bench(data_dir_with_tiny, out_file, "preview", "--frames", "8", "--size", "64")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in out_file.read_text().splitlines()}
    step = float(rows["| denoising step"][1])
    linear = float(rows["| preview, linear approximation"][1])
    # 8 frames of 8x8 latents, 4 channels to 3: 2 * 4 * 3 FLOPs a pixel (the counter's einsum), nothing else.
    assert linear == pytest.approx(2 * 4 * 3 * 8 * 8 * 8, rel=1e-3) and linear < step
    assert float(rows["| preview, TAESD"][1]) > linear


def test_retake_benchmark_counts_a_span_beside_the_whole_shot(data_dir_with_tiny, tmp_path):
    """#28: 40 frames in windows of 16 (starts 0, 12, 24), an 8-frame span mid-shot (16..23) touches two of the
    three windows and decodes 8 of 40 frames: less than the whole, more than nothing."""
    out_file = tmp_path / "BENCHMARKS.md"
    bench(data_dir_with_tiny, out_file, "retake", "--frames", "40", "--span", "8", "--size", "64", "--steps", "1")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in out_file.read_text().splitlines()}
    assert rows["| whole shot"][1] == "0..39" and rows["| retake"][1] == "16..23"
    assert 0.1 < float(rows["| retake"][3].rstrip(" |")) < 0.9
    assert "python -m server.bench retake --arch tiny --frames 40 --size 64 --steps 1 --span 8" in out_file.read_text()
