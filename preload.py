"""Command-line flags VMix adds to the web UI (the host calls ``preload`` before parsing its arguments)."""

from __future__ import annotations

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vmix-dir",
        type=str,
        default=None,
        help="folder with VMix adapter files (.safetensors); default: models/VMix",
    )
    parser.add_argument(
        "--vmix-loglevel",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=None,
        help="how much VMix writes to the console; default: INFO",
    )
