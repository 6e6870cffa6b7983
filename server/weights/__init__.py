"""Finding and reading the weights artists already have: diffusers folders, the Hugging Face cache, single-file
SD1.5 checkpoints, the original AnimateDiff v3 files and LoRAs, in ComfyUI/A1111 model folders (docs/weights.md).

refs (what the config names) -> locate (where it is on disk) -> checkpoint (reading a file safely) -> convert
(original layouts to diffusers modules, cached) -> lora; inventory answers `python -m server models`.
"""
