"""Frames to files: H.264 MP4 for Blender and browsers, lossless PNG per frame."""
