"""Image files as keyframes, read through Blender (bpy): fitted as the server fits keyframes, and every file
checked before anything renders, with one sentence naming the frame."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")


def test_image_files_are_checked_first_and_fitted(tmp_path):
    from PIL import Image

    from sparsectrl_blender.blender.keyframe_images import check_keyframe_files, keyframe_image
    from sparsectrl_blender.blender.scene_keyframes import KeyframeError

    bpy.ops.wm.read_factory_settings(use_empty=True)  # an unsaved file: "//" has nothing to be relative to
    with pytest.raises(KeyframeError, match="frame 1001: //art/key.png is relative to the .blend, which is not saved"):
        check_keyframe_files({1001: "//art/key.png"})
    painting = np.zeros((200, 300, 3), np.uint8)
    painting[:, :150], painting[:, 150:] = (220, 30, 20), (20, 40, 210)
    Image.fromarray(painting).save(tmp_path / "key.png")
    with pytest.raises(KeyframeError, match="frame 1040: no file"):
        check_keyframe_files({1001: str(tmp_path / "key.png"), 1040: str(tmp_path / "nope.png")})
    image = keyframe_image(str(tmp_path / "key.png"), 1001, 128, 64)
    assert image.shape == (64, 128, 3) and tuple(image[32, 10]) == (220, 30, 20)
    assert not bpy.data.images  # nothing of the file stays in the .blend
