"""Training a SparseCtrl encoder for a new modality (depth) on a frozen SD1.5 + AnimateDiff v3 model.

config (train.toml over train_defaults.toml) -> data (clips: RGB frames + condition frames + caption; videos get
their depth estimated and cached) -> masks (which frames are conditioned, drawn per clip) -> trainer (the paper's
recipe, resumable). `python -m server.train --config train.toml`; docs/training.md.
"""
