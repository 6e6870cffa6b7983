"""SparseCtrl previs Blender add-on (not built yet: see the open issue "Blender add-on").

It will render depth / line art / RGB passes at keyframes, send them to the server (docs/api.md) and put the
returned video on the Video Sequencer.
"""
