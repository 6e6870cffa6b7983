"""A batch run's shots (sparsectrl_blender/core/shot_list.py, #17 item 6): files named and a shot list, each shot
with its own flags; everything wrong with them is said before Blender opens any file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsectrl_blender import batch
from sparsectrl_blender.core.shot_list import ShotListError, plan_shots


def plans(*argv):
    return plan_shots(batch.build_parser, batch.build_parser().parse_args([str(a) for a in argv]))


def fake_blend(path: Path) -> Path:
    """Bytes that pass the batch's file checks (header, end block); Blender never opens them here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"BLENDER-v405" + bytes(64) + b"ENDB" + bytes(16))
    return path


def test_the_commands_shots_then_the_lists_each_with_its_own_flags(tmp_path):
    shots = tmp_path / "seq010" / "shots.txt"
    shots.parent.mkdir()
    shots.write_text(
        "\ufeff# seq010\n"  # a BOM, as Windows editors write
        'sh010.blend --seed 7 --prompt "ink, dusk"   # the hero shot\n'
        "\n"
        '"sh 020.blend" --out renders/sh020.blend --passes-dir passes --priority 0\n'
        "/abs/sh030.blend --scene alt\n"
    )
    got = plans("a.blend", "b.blend", "--shots", shots, "--priority", -1, "--prompt", "day", "--seed", 3)
    assert [p.where for p in got] == ["a.blend", "b.blend", "sh010.blend", "sh 020.blend", "/abs/sh030.blend"]
    assert [p.shot for p in got] == [
        "a.blend",
        "b.blend",
        str(shots.parent / "sh010.blend"),  # relative to the list
        str(shots.parent / "sh 020.blend"),
        "/abs/sh030.blend",
    ]
    assert [(p.seed, p.prompt, p.priority, p.scene) for p in got] == [
        (3, "day", -1, None),
        (3, "day", -1, None),
        (7, "ink, dusk", -1, None),
        (3, "day", 0, None),  # a line's flag wins, even when it is the default
        (3, "day", -1, "alt"),
    ]
    assert got[3].out == str(shots.parent / "renders" / "sh020.blend")
    assert got[3].passes_dir == str(shots.parent / "passes")
    assert got[0].out is None and got[2].passes_dir is None


@pytest.mark.parametrize(
    "line, said",
    [
        ("sh010.blend --bogus 1", "shots.txt line 2: unrecognized arguments: --bogus 1"),
        ("sh010.blend sh020.blend", "shots.txt line 2: name one .blend file per line (found 2"),
        ("--seed 4", "shots.txt line 2: name one .blend file per line (found 0: none)"),
        ("sh010.blend --shots other.txt", "shots.txt line 2: a shot list cannot name another"),
        ('"sh010.blend --seed 4', "shots.txt line 2: No closing quotation"),
        ("sh010.blend --priority high", "shots.txt line 2: argument --priority: invalid int value: 'high'"),
        ("sh010.blend --help", "shots.txt line 2"),
    ],
)
def test_a_bad_line_is_said_with_its_number(tmp_path, line, said):
    shots = tmp_path / "shots.txt"
    shots.write_text(f"# first\n{line}\n")
    with pytest.raises(ShotListError) as raised:
        plans("--shots", shots)
    assert str(raised.value).startswith(said)


def test_lists_and_flags_that_cannot_make_a_run(tmp_path):
    with pytest.raises(ShotListError, match="cannot read the shot list .*missing.txt"):
        plans("--shots", tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(ShotListError, match="names no shot"):
        plans("--shots", tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ShotListError, match="is not text"):
        plans("--shots", tmp_path / "binary.txt")
    with pytest.raises(ValueError, match="--out names one file, but this run has several shots"):
        plans("a.blend", "b.blend", "--out", "x.blend")


def _main(capsys, *argv):
    status = batch.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_the_batch_refuses_a_run_before_opening_any_file(tmp_path, capsys):
    """Each refusal exits 1 with one error line, before bpy opens anything (the files here are not real
    .blend files: opening one would fail otherwise)."""
    a, b = fake_blend(tmp_path / "a.blend"), fake_blend(tmp_path / "b.blend")
    shots = tmp_path / "shots.txt"

    shots.write_text("a.blend --scene one\na.blend --scene two\n")  # both would be a_previs.blend
    status, err = _main(capsys, "--shots", shots, "--server", "http://127.0.0.1:9")
    assert status == 1 and err.strip() == (
        f"error: a.blend (scene one) and a.blend (scene two) would both be saved as {tmp_path / 'a_previs.blend'}: "
        "give one of them its own --out in the shot list"
    )

    shots.write_text(f"a.blend --out {b}\nb.blend\n")  # a's result would overwrite a shot still to be read
    status, err = _main(capsys, "--shots", shots)
    assert status == 1 and err.strip() == f"error: a.blend: its result {b} is another shot of this run"

    nope = tmp_path / "nope.blend"
    status, err = _main(capsys, a, nope, "--prompt", "x")
    assert status == 1 and err.strip() == f"error: {nope}: no such .blend file: {nope}"

    status, err = _main(capsys, a, b, "--priority", 11)
    assert status == 1 and "error: " in err and "--priority must be between -10 and 10" in err

    with pytest.raises(SystemExit) as exit_:
        batch.main(["--prompt", "x"])  # no shot at all: a usage error, as for a bad flag
    assert exit_.value.code == 2 and "name a .blend file, several, or a shot list" in capsys.readouterr().err


def test_which_blenders_open_a_header():
    """#31 item 1: Blender 5.0's header is opened by 4.5 and later; the older 12-byte one by every supported
    Blender; a header newer than the table only by the running Blender's line."""
    from sparsectrl_blender.batch import oldest_reader

    assert oldest_reader(b"BLENDER17-01v0500", (5, 0)) == (4, 5)
    assert oldest_reader(b"BLENDER-v402", (4, 2)) is None and oldest_reader(b"BLENDER_V405", (4, 5)) is None
    assert oldest_reader(b"BLENDER17-02v0700", (7, 0)) == (7, 0)
