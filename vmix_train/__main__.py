"""python -m vmix_train --config my_run.toml: train a VMix adapter from labelled images (see README, "Training")."""

from __future__ import annotations

import argparse
import sys

from vmix_train.checkpoint import CheckpointError, load_single_file
from vmix_train.config import ConfigError, load_config
from vmix_train.dataset import DatasetError, load_dataset
from vmix_train.distributed import join, leave
from vmix_train.loop import Trainer, TrainingError
from vmix_train.state import StateError

_USER_ERRORS = (ConfigError, DatasetError, CheckpointError, TrainingError, StateError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmix_train", description=__doc__)
    parser.add_argument("--config", required=True, help="the run's TOML file (example: examples/train-sd15.toml)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, … (default: cuda when available)")
    parser.add_argument(
        "--check", action="store_true", help="check the config, the dataset and the base model, then stop"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    args = parser.parse_args(argv)
    world, device = join(args.device)  # one process, or one of several started by torchrun
    say = print if world.is_main else (lambda *_args, **_kwargs: None)
    try:
        # Cheapest checks first: a typo in the config or a broken image is reported before a model is loaded.
        config = load_config(args.config)
        examples = load_dataset(config.dataset, [d.name for d in config.dimensions])
        say(f"[VMix] {len(examples)} images, {len(config.dimensions)} dimensions; loading {config.checkpoint.name}")
        base = load_single_file(
            config.checkpoint,
            original_config=config.original_config,
            tokenizer=config.tokenizer,
            clip_skip=config.clip_skip,
            prediction=config.prediction,
        )
        options = config.train.for_model(base.family, base.scheduler.config.prediction_type)
        say(
            f"[VMix] base model: {base.family}, {base.scheduler.config.prediction_type} prediction; "
            f"learning rate {options.learning_rate:g}, {options.resolution} px"
        )
        if args.check:
            say("[VMix] config, dataset and base model are fine")
            return 0
        Trainer(config, base, examples, device=device, progress=not args.no_progress, world=world).run()
    except _USER_ERRORS as exc:
        print(f"[VMix] {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[VMix] stopped; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
