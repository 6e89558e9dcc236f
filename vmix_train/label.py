"""python -m vmix_train.label --images <folder> --config run.toml --out <dataset folder>: label a folder of images
for a VMix run with CLIP zero-shot scores (and optionally the LAION aesthetic predictor), write the trainer's
dataset and a report. Every option is described in docs/labelling.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from vmix_train.aesthetic import AestheticHeadError
from vmix_train.clip_models import ClipModelError
from vmix_train.labelling import DEFAULT_CLIP, REPORT_FOLDER, LabelOptions, run_labelling
from vmix_train.labelling_inputs import LabelError
from vmix_train.labelling_report import REPORT_MD
from vmix_train.labelling_settings import CommandLineRules

_USER_ERRORS = (LabelError, ClipModelError, AestheticHeadError)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmix_train.label", description=__doc__)
    p.add_argument("--images", required=True, type=Path, help="the folder of images (subfolders are included)")
    p.add_argument("--config", required=True, type=Path, help="the run's TOML file: its [[dimensions]] are labelled")
    p.add_argument("--out", type=Path, help="the dataset folder to write (default: the config's [data] folder)")
    p.add_argument("--clip", default=DEFAULT_CLIP, help=f"CLIP model: local folder or HF cache name ({DEFAULT_CLIP})")
    p.add_argument("--device", help="cuda, cuda:1, cpu, … (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="model precision (default: float16 on a GPU, else float32)")
    p.add_argument("--batch-size", type=int, default=32, help="images per CLIP batch (default 32)")
    p.add_argument("--workers", type=int, default=4, help="threads that decode images (default 4)")
    p.add_argument("--settings", type=Path, help="a TOML file of [dimensions.NAME] tables (see docs/labelling.md)")
    p.add_argument("--contrast", action="append", default=[], metavar="NAME=TEXT", help="a dimension's contrast text")
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a dimension's threshold; a bare VALUE sets it for every CLIP dimension",
    )
    p.add_argument("--fraction", action="append", default=[], metavar="NAME=SHARE", help="label this share yes")
    p.add_argument("--calibration", type=Path, help="a metadata.jsonl of hand-labelled images to choose thresholds")
    p.add_argument("--keep-labels", action="store_true", help="keep labels the images folder's metadata.jsonl states")
    p.add_argument(
        "--caption-source",
        choices=("sidecar", "metadata"),
        default="sidecar",
        help="which caption wins when an image has both a caption file and a metadata.jsonl entry (default sidecar)",
    )
    p.add_argument("--caption-extension", default=".txt", help="caption files' extension (default .txt)")
    p.add_argument("--default-caption", help="the caption of images that have none (otherwise they are an error)")
    p.add_argument("--aesthetic-head", type=Path, help="the LAION aesthetic head as .safetensors (see docs)")
    p.add_argument("--aesthetic-clip", help="the CLIP ViT-L/14 for the head (default: --clip)")
    p.add_argument("--min-aesthetic", type=float, help="leave out images whose aesthetic score is below this")
    p.add_argument(
        "--aesthetic-dimension", action="append", default=[], metavar="NAME", help="label NAME by aesthetic score"
    )
    p.add_argument("--link", action="store_true", help="symlink images into --out instead of copying them")
    p.add_argument("--cache", type=Path, help="embedding cache folder (default: <images>/.vmix-label-cache)")
    p.add_argument("--report", type=Path, help=f"report folder (default: <out>/{REPORT_FOLDER})")
    p.add_argument("--dry-run", action="store_true", help="score and write the report, but not the dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return p


def options_from(args: argparse.Namespace) -> LabelOptions:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES[args.dtype] if args.dtype else (torch.float32 if device == "cpu" else torch.float16)
    return LabelOptions(
        images=args.images,
        config=args.config,
        out=args.out,
        clip=args.clip,
        device=device,
        dtype=dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        settings=args.settings,
        rules=CommandLineRules(args.contrast, args.threshold, args.fraction, args.aesthetic_dimension),
        calibration=args.calibration,
        keep_labels=args.keep_labels,
        caption_source=args.caption_source,
        caption_extension="." + args.caption_extension.lstrip("."),
        default_caption=args.default_caption,
        aesthetic_head=args.aesthetic_head,
        aesthetic_clip=args.aesthetic_clip,
        min_aesthetic=args.min_aesthetic,
        link=args.link,
        cache=args.cache,
        report=args.report,
        dry_run=args.dry_run,
    )


def _progress_bar(enabled: bool) -> Callable[[int, str], Callable[[int], object]]:
    def start(total: int, description: str) -> Callable[[int], object]:
        from tqdm.auto import tqdm  # installed with diffusers and transformers

        bar = tqdm(total=total, desc=description, unit="image", disable=not enabled)

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return advance

    return start


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        options = options_from(args)
        report = run_labelling(options, progress=_progress_bar(not args.no_progress))
    except _USER_ERRORS as exc:
        print(f"[VMix] {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that fills up or a folder that turns read-only half-way
        print(f"[VMix] could not read or write a file: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[VMix] stopped; the images embedded so far are cached: run the same command to go on", file=sys.stderr)
        return 130
    print(report.markdown())
    folder = options.report or report.dataset_folder / REPORT_FOLDER
    if options.dry_run:
        print(f"[VMix] dry run: no dataset written; report in {folder / REPORT_MD}")
    else:
        print(f"[VMix] wrote {report.labelled} images to {report.dataset_folder}; report in {folder / REPORT_MD}")
        print(f"[VMix] next: python -m vmix_train --config {args.config} --check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
