"""The Look reference's pure side (#30, core/reference.py): which reference a shot uses, the files checked and
sent as they are, the body's "reference" and what the strip records; the batch's flags and a shot list's lines."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest

from sparsectrl_blender.core import reference as look
from sparsectrl_blender.core.png import encode_png
from sparsectrl_blender.core.reference import LookReference, LookReferenceError
from sparsectrl_blender.core.request import GenerationSettings, job_body

PNG = encode_png(np.full((8, 8, 3), 90, np.uint8))
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP_HEAD = b"RIFF\x24\x00\x00\x00WEBPVP8 "


def test_a_shots_own_reference_replaces_its_sequences_and_an_empty_own_one_is_none():
    sequence = LookReference(("knight.png",), 0.6, source="sequence 'Edit'")
    own = LookReference(("other.png",), 1.0, source="shot 'sh020'")
    assert look.resolve(None, sequence) is sequence
    assert look.resolve(own, sequence) is own
    assert look.resolve(LookReference((), source="shot 'sh020'"), sequence) is None  # own, no images: none
    assert look.resolve(None, None) is None
    assert look.resolve(None, LookReference(("knight.png",), 0.0)) is None  # strength 0: the job without it


def test_files_are_read_as_they_are_and_checked_for_what_the_server_decodes(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(JPEG_HEAD + b"rest")
    (tmp_path / "c.webp").write_bytes(WEBP_HEAD + b"rest")
    (tmp_path / "notes.txt").write_text("not an image")
    locate = lambda text: look.absolute(text, str(tmp_path / "shot.blend"))  # noqa: E731
    reference = LookReference(("//a.png", str(tmp_path / "b.jpg"), "//c.webp"))
    images = look.read_images(reference, locate)
    assert images == [PNG, JPEG_HEAD + b"rest", WEBP_HEAD + b"rest"]
    with pytest.raises(LookReferenceError, match="notes.txt is not a PNG, JPEG or WebP image"):
        look.read_images(LookReference(("//notes.txt",)), locate)
    with pytest.raises(LookReferenceError, match="no file .*missing.png"):
        look.read_images(LookReference(("//missing.png",)), locate)
    with pytest.raises(LookReferenceError, match="relative to the .blend, which is not saved yet"):
        look.read_images(LookReference(("//a.png",)), lambda text: look.absolute(text, ""))


def test_settings_the_server_refuses_are_said_before_anything_is_read():
    with pytest.raises(LookReferenceError, match="9 images: the server takes at most 8"):
        look.check(LookReference(tuple(f"{i}.png" for i in range(9))))
    with pytest.raises(LookReferenceError, match="strength must be 0 to 2 \\(got 2.5\\)"):
        look.check(LookReference(("a.png",), 2.5))
    with pytest.raises(LookReferenceError, match="Look reference guidance: start 0.8 and end 0.2"):
        look.check(LookReference(("a.png",), 1.0, 0.8, 0.2))


def test_the_bodys_reference_and_the_strips_record():
    reference = LookReference(("//a.png", "//b.png"), 0.6000000238418579, source="sequence 'Edit'")
    entry = look.entry(reference, [PNG, PNG[:-1]])
    assert entry == {"images": [base64.b64encode(PNG).decode(), base64.b64encode(PNG[:-1]).decode()], "strength": 0.6}
    windowed = look.entry(LookReference(("a.png",), 1.0, 0.0, 0.5), [PNG])
    assert (windowed["guidance_start"], windowed["guidance_end"]) == (0.0, 0.5)
    record = look.record(reference, [PNG, PNG[:-1]])
    assert record == {
        "files": ["//a.png", "//b.png"],
        "sha256": [hashlib.sha256(PNG).hexdigest(), hashlib.sha256(PNG[:-1]).hexdigest()],
        "strength": 0.6,
        "guidance": [0.0, 1.0],
        "source": "sequence 'Edit'",
    }


def test_job_body_carries_the_reference_only_when_given_and_a_reference_alone_steers():
    settings = GenerationSettings(prompt="a knight", keyframe_source="NONE")
    with pytest.raises(ValueError, match="nothing steers the preview"):
        job_body(settings, 8, 64, 64, 24, 8, [])
    entry = {"images": ["AAAA"], "strength": 0.6}
    assert job_body(settings, 8, 64, 64, 24, 8, [], reference=entry)["reference"] == entry
    assert "reference" not in job_body(GenerationSettings(prompt="a knight"), 8, 64, 64, 24, 8, [])


def test_the_panel_is_greyed_out_with_the_reason_when_the_server_has_no_ip_adapter():
    assert look.unavailable(None) is None  # not asked: nothing said
    assert look.unavailable({"ip_adapter": {"name": "ip-adapter_sd15", "kind": "plain"}}) is None
    assert "has no IP-Adapter; add one under [model.ip_adapter]" in look.unavailable({"ip_adapter": None})
    assert "older than reference images" in look.unavailable({"modalities": ["lineart"]})


def test_reference_flags_parse_and_a_shot_list_line_carries_its_own(tmp_path):
    from sparsectrl_blender.batch import build_parser
    from sparsectrl_blender.core.shot_list import plan_shots

    assert look.parse_files(" a.png, b.jpg ,") == ("a.png", "b.jpg")
    assert look.parse_files("none") == ()
    args = build_parser().parse_args(["--shots", str(tmp_path / "list.txt"), "--reference", "/art/knight.png"])
    assert args.reference_strength is None
    (tmp_path / "list.txt").write_text(
        "sh010.blend\n"
        "sh020.blend --reference art/b.png,//beside.png --reference-strength 0.4\n"
        "sh030.blend --reference none\n"
    )
    plans = plan_shots(build_parser, args)
    assert [p.reference for p in plans] == [
        "/art/knight.png",  # the command's
        f"{tmp_path / 'art' / 'b.png'},//beside.png",  # the line's, relative to the list; // stays the .blend's
        "none",
    ]
    assert [p.reference_strength for p in plans] == [None, 0.4, None]
    name = look.frame_file_name("SparseCtrl lineart 7", 1012, "0123456789ab")
    assert name == "SparseCtrl_lineart_7_01234567_frame1012.png"


def test_batch_help_has_a_look_reference_group(capsys):
    from sparsectrl_blender.batch import build_parser

    text = build_parser().format_help()
    assert "look reference:" in text and "--reference FILE[,FILE...]" in text and "--reference-strength S" in text
