"""python -m vmix_train --config my_run.toml: train a VMix adapter from labelled images (see docs/training.md).

Every mistake a user can make (a wrong option, a bad config or dataset, a device this machine lacks, an output
folder that cannot be written, a base model that does not load) ends in one ``[VMix]`` message and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

import torch

from vmix_train.cache import CacheError
from vmix_train.checkpoint import CheckpointError, load_single_file
from vmix_train.config import ConfigError, load_config
from vmix_train.data import run_buckets
from vmix_train.dataset import DatasetError, load_dataset
from vmix_train.distributed import join, leave
from vmix_train.loop import Trainer, TrainingError
from vmix_train.preflight import UsageError, check_device, check_run
from vmix_train.state import StateError

_USER_ERRORS = (ConfigError, DatasetError, CheckpointError, TrainingError, StateError, UsageError, CacheError)
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"[VMix] {message} (see python -m vmix_train --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m vmix_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run's TOML file (example: examples/train-sd15.toml)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument(
        "--check", action="store_true", help="check the config, the dataset and the base model, then stop"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except _USER_ERRORS as exc:
        print(f"[VMix] {exc}", file=sys.stderr)
        return USAGE_ERROR
    except torch.cuda.OutOfMemoryError:
        print(
            "[VMix] out of GPU memory: lower batch_size (and raise gradient_accumulation), or set "
            'gradient_checkpointing = true or mixed_precision = "bf16"',
            file=sys.stderr,
        )
        return USAGE_ERROR
    except OSError as exc:  # a full disk, a folder that became read-only, a file that vanished mid-run
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"[VMix] {exc.strerror or exc}{where}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("[VMix] stopped; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        leave()


def _run(args: argparse.Namespace) -> int:
    # Cheapest checks first: a typo in the config, a missing GPU or a broken image is reported before a model is
    # loaded.
    device = check_device(args.device)
    config = load_config(args.config)
    check_run(config, device)
    examples = load_dataset(config.dataset, [d.name for d in config.dimensions])
    world, device = join(str(device) if device is not None else None)  # one process, or one of torchrun's
    say = print if world.is_main else (lambda *_args, **_kwargs: None)
    say(f"[VMix] {len(examples)} images, {len(config.dimensions)} dimensions; loading {config.checkpoint.name}")
    base = load_single_file(
        config.checkpoint,
        original_config=config.original_config,
        tokenizer=config.tokenizer,
        clip_skip=config.clip_skip,
        prediction=config.prediction,
    )
    options = config.train.for_model(base.family, base.scheduler.config.prediction_type)
    buckets = run_buckets(options)
    shape = f"{len(buckets)} buckets of about {options.resolution}² px" if options.buckets else "square"
    say(
        f"[VMix] base model: {base.family}, {base.scheduler.config.prediction_type} prediction; "
        f"learning rate {options.learning_rate:g}, {options.resolution} px ({shape})"
    )
    if args.check:
        say("[VMix] config, dataset and base model are fine")
        return 0
    Trainer(config, base, examples, device=device, progress=not args.no_progress, world=world).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
