"""The pass contract: render buffers -> condition images (depth, line art), numpy only.

Shared by the Blender add-on (which renders the passes) and the server's training data (which must make the
same depth images from video), so neither imports the other. The add-on's extension zip carries it as a
wheel (addon_manifest.toml `wheels`, built by sparsectrl_blender/build.py); Blender installs it beside the
add-on. Imports no bpy and nothing from the server.
"""
