"""`python -m server.train --config train.toml`: train a SparseCtrl encoder (docs/training.md)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.train", description=__doc__)
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="train.toml over server/train/train_defaults.toml"
    )
    parser.add_argument("--steps", type=int, help="train until this step (overrides [train] steps)")
    parser.add_argument("--output-dir", metavar="DIR", help="overrides [train] output_dir")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the output has checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from ..engine.models import ModelLoadError
    from .config import load_train_config
    from .data import DataError
    from .trainer import Trainer

    overrides = {"train": {k: v for k, v in (("steps", args.steps), ("output_dir", args.output_dir)) if v is not None}}
    try:
        config = load_train_config(args.config, overrides if overrides["train"] else None)
        folder = Trainer(config).run(resume=not args.no_resume)
    except (ConfigError, ModelLoadError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f'encoder saved in {folder}: set [model.encoders] {config["encoder"]["modality"]} = "{folder}" for the server'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
