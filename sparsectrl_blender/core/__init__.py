"""The add-on's logic without bpy: HTTP client, frame mapping, settings and the job body, the job runner,
PNG writing, process exit. Importable and tested without Blender."""
