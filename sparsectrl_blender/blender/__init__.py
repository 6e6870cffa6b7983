"""The add-on's Blender side (bpy): settings on the scene, operators, panels, passes rendered in a scene copy,
the previs scene and its strips."""
