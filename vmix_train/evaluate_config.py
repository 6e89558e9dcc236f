"""The evaluation's configuration (``python -m vmix_train.evaluate --config eval.toml``): a TOML file, checked in
full before anything is loaded. Keys and defaults: docs/evaluation.md and examples/eval.toml."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmix_train.config import read_toml

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PRECISIONS = ("no", "fp16", "bf16")
DIMENSION_SETTINGS = ("all", "each", "none")  # besides explicit ones in the web UI's syntax ("color, light:0.5")

_SECTIONS: dict[str, set[str]] = {
    "model": {"checkpoint", "config", "tokenizer", "clip_skip", "prediction"},
    "adapters": {"files"},
    "prompts": {"file", "limit"},
    "sampling": {"seeds", "steps", "guidance", "negative_prompt", "size", "batch_size", "precision"},
    "vmix": {"lambdas", "dimensions"},
    "metrics": {"clip", "aesthetic_head", "aesthetic_clip", "fid_reference", "fid_inception"},
    "output": {"folder", "grid_prompts"},
}


class EvalConfigError(ValueError):
    """An evaluation config that cannot be used; the message names the file and every problem in it."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"evaluation config '{path}' has {len(problems)} problem(s):\n{listing}")


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path
    adapters: tuple[Path, ...]
    prompts: tuple[str, ...]
    output_dir: Path
    clip: str  # a CLIP model folder, or a Hugging Face cache name
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    dimensions: tuple[str, ...] = DIMENSION_SETTINGS
    seeds: tuple[int, ...] = (0,)
    steps: int = 25  # the paper's evaluation: DDIM 25 steps, CFG 7.5, no negative prompt
    guidance: float = 7.5
    negative_prompt: str = ""
    size: int = 0  # 0 = the family's native size
    batch_size: int = 4
    precision: str = "no"
    original_config: Path | None = None
    tokenizer: Path | None = None
    clip_skip: int = 1
    prediction: str | None = None
    aesthetic_head: Path | None = None
    aesthetic_clip: str | None = None  # None = the CLIP score's model
    fid_reference: Path | None = None
    fid_inception: Path | None = None
    grid_prompts: int = 50  # grids for the first N prompts
    source: Path | None = None  # the config file itself

    @property
    def model_options(self) -> dict[str, Any]:
        """``load_single_file``'s options from [model], the same keys as the trainer's."""
        return {
            "original_config": self.original_config,
            "tokenizer": self.tokenizer,
            "clip_skip": self.clip_skip,
            "prediction": self.prediction,
        }

    @property
    def has_fid(self) -> bool:
        return self.fid_reference is not None


def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and check an evaluation config; relative paths resolve against the file's folder."""
    path = Path(path)
    raw = read_toml(path, lambda problem: EvalConfigError(path, [problem]), "the evaluation's .toml file")
    reader = _Reader(raw, path.parent)
    reader.check_layout()
    model, sampling, metrics = (reader.section(name) for name in ("model", "sampling", "metrics"))

    checkpoint = reader.existing_path("model", "checkpoint", required=True)
    original_config = reader.existing_path("model", "config")
    tokenizer = reader.existing_path("model", "tokenizer")
    aesthetic_head = reader.existing_path("metrics", "aesthetic_head")
    adapters = reader.adapters()
    prompts = reader.prompts()
    clip = reader.model_source("metrics", "clip", required=True)
    aesthetic_clip = reader.model_source("metrics", "aesthetic_clip")
    fid_reference = reader.existing_path("metrics", "fid_reference")
    fid_inception = reader.existing_path("metrics", "fid_inception")
    if fid_reference is not None and not reader.problems:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in fid_reference.rglob("*")):
            reader.problems.append(f"[metrics] fid_reference {fid_reference} holds no .png/.jpg/.webp images")
    if fid_reference is not None and "fid_inception" not in metrics:
        reader.problems.append(
            "[metrics] fid_reference needs fid_inception: FID's Inception-v3 weights as a local .safetensors file "
            "(see docs/evaluation.md)"
        )
    lambdas = reader.numbers("vmix", "lambdas", EvalConfig.lambdas, 0.0, 2.0)
    dimensions = reader.dimension_settings()
    seeds = reader.seeds()
    output_dir = reader.path("output", "folder", required=True)
    prediction = model.get("prediction")
    if prediction is not None and prediction not in ("epsilon", "v"):
        reader.problems.append(f'[model] prediction must be "epsilon" or "v", got {prediction!r}')
    options = {
        "clip_skip": reader.integer("model", "clip_skip", 1, 1, 12),
        "steps": reader.integer("sampling", "steps", EvalConfig.steps, 1, 10_000),
        "size": reader.integer("sampling", "size", EvalConfig.size, 0, 8192),
        "batch_size": reader.integer("sampling", "batch_size", EvalConfig.batch_size, 1, 4096),
        "grid_prompts": reader.integer("output", "grid_prompts", EvalConfig.grid_prompts, 0, 1_000_000),
    }
    if options["size"] % 8:
        reader.problems.append(f"[sampling] size must be 0 (the family's) or a multiple of 8, got {options['size']}")
    guidance = sampling.get("guidance", EvalConfig.guidance)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 1:
        reader.problems.append(f"[sampling] guidance must be a number ≥ 1 (1 = no guidance), got {guidance!r}")
    negative = sampling.get("negative_prompt", "")
    if not isinstance(negative, str):
        reader.problems.append(f"[sampling] negative_prompt must be text, got {negative!r}")
    precision = sampling.get("precision", "no")
    if precision not in PRECISIONS:
        reader.problems.append(f"[sampling] precision must be one of {PRECISIONS}, got {precision!r}")
    if reader.problems:
        raise EvalConfigError(path, reader.problems)
    assert checkpoint is not None and output_dir is not None and clip is not None
    return EvalConfig(
        checkpoint=checkpoint,
        adapters=adapters,
        prompts=prompts,
        output_dir=output_dir,
        clip=clip,
        lambdas=lambdas,
        dimensions=dimensions,
        seeds=seeds,
        guidance=float(guidance),
        negative_prompt=negative,
        precision=precision,
        original_config=original_config,
        tokenizer=tokenizer,
        prediction=prediction,
        aesthetic_head=aesthetic_head,
        aesthetic_clip=aesthetic_clip,
        fid_reference=fid_reference,
        fid_inception=fid_inception,
        source=path.resolve(),
        **options,
    )


class _Reader:
    """Typed look-ups in the parsed TOML that collect every problem instead of stopping at the first."""

    def __init__(self, raw: dict[str, Any], base: Path) -> None:
        self.raw = raw
        self.base = base
        self.problems: list[str] = []

    def check_layout(self) -> None:
        unknown = sorted(set(self.raw) - set(_SECTIONS))
        if unknown:
            self.problems.append(f"unknown section(s) {unknown}; known: {', '.join(_SECTIONS)}")
        for name, allowed in _SECTIONS.items():
            section = self.raw.get(name, {})
            if not isinstance(section, dict):
                self.problems.append(f"[{name}] must be a table")
                continue
            extra = sorted(set(section) - allowed)
            if extra:
                self.problems.append(f"[{name}] unknown key(s) {extra}; known: {', '.join(sorted(allowed))}")

    def section(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        return value if isinstance(value, dict) else {}

    def path(self, section: str, key: str, required: bool = False) -> Path | None:
        value = self.section(section).get(key)
        if value is None:
            if required:
                self.problems.append(f"[{section}] {key} is missing (a path)")
            return None
        if not isinstance(value, str) or not value:
            self.problems.append(f"[{section}] {key} must be a path (text), got {value!r}")
            return None
        return (self.base / value).expanduser().resolve()

    def existing_path(self, section: str, key: str, required: bool = False) -> Path | None:
        found = self.path(section, key, required)
        if found is not None and not found.exists():
            self.problems.append(f"[{section}] {key} {found} does not exist")
        return found

    def model_source(self, section: str, key: str, required: bool = False) -> str | None:
        """A local model folder (relative to the config) or, when no such folder exists, a Hugging Face cache name."""
        value = self.section(section).get(key)
        if value is None:
            if required:
                self.problems.append(
                    f"[{section}] {key} is missing: a CLIP model folder or a Hugging Face cache name such as "
                    "openai/clip-vit-large-patch14"
                )
            return None
        if not isinstance(value, str) or not value:
            self.problems.append(f"[{section}] {key} must be a folder or a model name (text), got {value!r}")
            return None
        local = (self.base / value).expanduser()
        return str(local.resolve()) if local.exists() else value

    def integer(self, section: str, key: str, default: int, low: int, high: int) -> int:
        value = self.section(section).get(key, default)
        if type(value) is not int or not low <= value <= high:
            self.problems.append(f"[{section}] {key} must be a whole number from {low} to {high}, got {value!r}")
            return default
        return value

    def numbers(self, section: str, key: str, default: tuple[float, ...], low: float, high: float) -> tuple[float, ...]:
        values = self.section(section).get(key, list(default))
        ok = (
            isinstance(values, list)
            and values
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in values)
        )
        if not ok:
            self.problems.append(
                f"[{section}] {key} must be a list of numbers from {low:g} to {high:g}, got {values!r}"
            )
            return default
        if len(set(values)) != len(values):
            self.problems.append(f"[{section}] {key} has repeated values: {values}")
        return tuple(sorted(float(v) for v in values))

    def adapters(self) -> tuple[Path, ...]:
        patterns = self.section("adapters").get("files")
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
            self.problems.append(
                "[adapters] files must be a list of adapter files (.safetensors; a glob such as "
                '"run/*-step*.safetensors" takes every snapshot)'
            )
            return ()
        found: list[Path] = []
        for pattern in patterns:
            full = str((self.base / pattern).expanduser())
            matches = (
                sorted(Path(p).resolve() for p in glob.glob(full)) if glob.has_magic(full) else [Path(full).resolve()]
            )
            matches = [p for p in matches if p.is_file()]
            if not matches:
                self.problems.append(f"[adapters] {pattern!r} matches no file")
            found.extend(p for p in matches if p not in found)
        stems = [p.stem for p in found]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            self.problems.append(f"[adapters] two adapters share the name {repeated}: rows are named by file name")
        return tuple(found)

    def prompts(self) -> tuple[str, ...]:
        path = self.existing_path("prompts", "file", required=True)
        limit = self.integer("prompts", "limit", 0, 0, 10_000_000)
        if path is None or not path.is_file():
            return ()
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        prompts = tuple(line for line in lines if line)
        if not prompts:
            self.problems.append(f"[prompts] file {path} holds no prompts (one per line)")
        return prompts[:limit] if limit else prompts

    def dimension_settings(self) -> tuple[str, ...]:
        values = self.section("vmix").get("dimensions", list(DIMENSION_SETTINGS))
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            self.problems.append(
                '[vmix] dimensions must be a list of settings: "all", "each" (every dimension alone), "none", or '
                'dimensions in the web UI\'s syntax ("color, lighting:0.5")'
            )
            return DIMENSION_SETTINGS
        return tuple(v.strip() for v in values)

    def seeds(self) -> tuple[int, ...]:
        values = self.section("sampling").get("seeds", [0])
        if not isinstance(values, list) or not values or not all(type(v) is int and v >= 0 for v in values):
            self.problems.append(f"[sampling] seeds must be a list of whole numbers ≥ 0, got {values!r}")
            return (0,)
        if len(set(values)) != len(values):
            self.problems.append(f"[sampling] seeds has repeated values: {values}")
        return tuple(values)
