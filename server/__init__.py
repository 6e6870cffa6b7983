"""SparseCtrl previs server: AnimateDiff v3 + SparseCtrl behind a small HTTP job API (docs/api.md)."""

__version__ = "0.1.0"
