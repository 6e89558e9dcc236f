"""Proof of mechanism on a toy problem that runs on any CPU: does a trained VMix adapter move an aesthetic property?

    python -m vmix_train.toy [--out toy-run] [--quick]

1. A synthetic image set: flat colour swatches with a random brightness and a random warmth (red versus blue).
2. A tiny base diffusion model (a diffusers UNet on pixels, v-prediction) learns them from one fixed caption.
3. Each image is labelled on two dimensions by its measured property: "bright" (brightness above the middle of its
   range) and "warm" (more red than blue). The images, captions and labels are written as a dataset folder.
4. The real trainer (``vmix_train.loop.Trainer``) trains a VMix adapter on that folder, with the base frozen.
5. The adapter file is loaded back; 64+ images per setting are sampled with fixed seeds, and each property's mean is
   printed with its dimension off and on, and along a λ sweep. The λ-sweep grid is saved as a PNG.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from vmix_ext.adapter import Dimension, VMixAdapter
from vmix_ext.weights import load_adapter
from vmix_train.config import RunConfig, TrainingOptions
from vmix_train.dataset import load_dataset
from vmix_train.loop import Trainer
from vmix_train.model import BaseModel
from vmix_train.sampling import grid, sample
from vmix_train.streams import MAX_SEED, SEED_RANGE, derived_seed

CAPTION = "a colour swatch"
DIMENSIONS = (
    Dimension("bright", "bright lighting", "sks1"),
    Dimension("warm", "warm colour", "sks2"),
)
LAMBDAS = (0.0, 0.5, 1.0, 1.5)
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 "
BOS, EOS = len(_CHARS) + 1, len(_CHARS) + 2


@dataclass(frozen=True)
class ToySettings:
    images: int = 1024
    size: int = 4  # pixels per side
    width: int = 32  # UNet channels
    context_dim: int = 32
    base_steps: int = 600
    base_lr: float = 2e-3
    adapter_steps: int = 600
    adapter_lr: float = 1e-2
    batch: int = 64
    samples: int = 64  # images per setting
    sample_steps: int = 20
    seed: int = 0


QUICK = ToySettings(images=512, base_steps=300, adapter_steps=300, samples=64)


# -- the synthetic data and its measured properties ----------------------------------------------------------------


def swatches(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Flat colours in [-1, 1]: brightness uniform in [0.2, 0.8], warmth (red minus blue, halved) in [-0.15, 0.15],
    and a little green jitter so the colours are not all on one plane."""
    brightness = 0.2 + 0.6 * torch.rand(count, generator=generator)
    warmth = 0.3 * torch.rand(count, generator=generator) - 0.15
    green = 0.1 * torch.rand(count, generator=generator) - 0.05
    rgb = torch.stack([brightness + warmth, brightness + green, brightness - warmth], 1).clamp(0, 1)
    return (rgb * 2 - 1)[:, :, None, None].expand(count, 3, size, size).contiguous()


def brightness(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) / 2).mean((1, 2, 3))


def warmth(images: torch.Tensor) -> torch.Tensor:
    rgb = ((images.clamp(-1, 1) + 1) / 2).mean((2, 3))
    return (rgb[:, 0] - rgb[:, 2]) / 2


PROPERTIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"bright": brightness, "warm": warmth}
THRESHOLDS = {"bright": 0.5, "warm": 0.0}  # the middle of each property's range


# -- the tiny base model -------------------------------------------------------------------------------------------


def tokenize(texts: list[str]) -> torch.Tensor:
    """Character tokens between begin and end marks, padded with the end mark to 77, as CLIP pads."""
    rows = []
    for text in texts:
        letters = [_CHARS.index(c) + 1 for c in text.lower() if c in _CHARS][:75]
        ids = [BOS, *letters, EOS]
        rows.append(ids + [EOS] * (77 - len(ids)))
    return torch.tensor(rows)


def build_base(settings: ToySettings) -> BaseModel:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(settings.seed)
    unet = UNet2DConditionModel(
        sample_size=settings.size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(settings.width,),
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=settings.context_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=EOS + 1,
            hidden_size=settings.context_dim,
            intermediate_size=2 * settings.context_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
    )
    # v-prediction: its loss weighs the high-noise steps, where a flat swatch's overall colour is decided, far more
    # than ε-prediction does; with ε the label's signal is too faint for a few hundred steps.
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    return BaseModel(unet, encoder.eval(), tokenize, EOS, scheduler, "sd1", name="toy-base")


def train_base(base: BaseModel, images: torch.Tensor, settings: ToySettings, log: Callable[[str], None]) -> None:
    """Plain diffusion training of the whole UNet on the swatches, all with the same caption."""
    generator = torch.Generator().manual_seed(derived_seed(settings.seed, "toy-base-training"))
    context = base.encode_text([CAPTION]).expand(settings.batch, -1, -1)
    scheduler = base.scheduler
    optimizer = torch.optim.AdamW(base.unet.parameters(), settings.base_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.base_lr, total_steps=settings.base_steps, pct_start=0.05
    )
    base.unet.train()
    for step in range(settings.base_steps):
        x0 = images[torch.randint(0, len(images), (settings.batch,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (settings.batch,), generator=generator)
        target = scheduler.get_velocity(x0, noise, t)
        prediction = base.unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log(f"  base step {step + 1}/{settings.base_steps}, loss {loss.item():.4f}")
    base.freeze()


def write_dataset(folder: Path, images: torch.Tensor) -> None:
    """The swatches as PNGs plus metadata.jsonl (docs/dataset-format.md), labelled by their measured properties."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, image in enumerate(images):
        pixels = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        name = f"{index:05d}.png"
        Image.fromarray(pixels).save(folder / name)
        labels = {d: bool(PROPERTIES[d](image[None])[0] > THRESHOLDS[d]) for d in PROPERTIES}
        lines.append(json.dumps({"file_name": name, "caption": CAPTION, "labels": labels}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- measuring -----------------------------------------------------------------------------------------------------


@dataclass
class ToyResult:
    base: dict[str, float]  # property -> mean, no adapter
    off: dict[str, float]  # property -> mean with its dimension off (the other dimension off too), λ = 1
    on: dict[str, float]  # property -> mean with its dimension on (the other off), λ = 1
    sweep: dict[str, list[float]]  # property -> means with its dimension on, for each λ in LAMBDAS
    noise: dict[str, float]  # property -> standard error of a mean over the sampled images (seed noise)
    adapter_path: Path
    grid_path: Path
    seconds: float


def measure(
    base: BaseModel, adapter: VMixAdapter, settings: ToySettings
) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, list[float]], dict[str, float], list]:
    seeds = list(range(1000, 1000 + settings.samples))
    prompts = [CAPTION] * len(seeds)
    common = {"size": settings.size, "steps": settings.sample_steps, "guidance": 1.0}
    names = [d.name for d in DIMENSIONS]

    def run(strengths: dict[str, float] | None, scale: float) -> torch.Tensor:
        if strengths is None:
            return sample(base, prompts, seeds, **common)
        return sample(base, prompts, seeds, adapter=adapter, strengths=strengths, scale=scale, **common)

    plain = run(None, 0.0)
    all_off = run(dict.fromkeys(names, 0.0), 1.0)
    base_means = {n: PROPERTIES[n](plain).mean().item() for n in names}
    noise = {n: (PROPERTIES[n](plain).std() / len(seeds) ** 0.5).item() for n in names}
    off = {n: PROPERTIES[n](all_off).mean().item() for n in names}
    on, sweep, columns = {}, {}, []
    for name in names:
        only = {n: float(n == name) for n in names}
        images = [run(only, scale) for scale in LAMBDAS]
        sweep[name] = [PROPERTIES[name](x).mean().item() for x in images]
        on[name] = sweep[name][LAMBDAS.index(1.0)]
        columns.extend(x[:8] for x in images)
    return base_means, off, on, sweep, noise, columns


def run_toy(out: str | Path, settings: ToySettings = ToySettings(), log: Callable[[str], None] = print) -> ToyResult:
    start = time.perf_counter()
    out = Path(out)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    generator = torch.Generator().manual_seed(settings.seed)
    images = swatches(settings.images, settings.size, generator)
    log(f"[toy] {settings.images} swatches of {settings.size}x{settings.size} pixels; training the base model")
    base = build_base(settings)
    train_base(base, images, settings, log)
    write_dataset(out / "data", images)
    options = TrainingOptions(
        steps=settings.adapter_steps,
        batch_size=settings.batch,
        learning_rate=settings.adapter_lr,
        weight_decay=0.0,
        seed=settings.seed,
        save_every=settings.adapter_steps,
        sample_every=settings.adapter_steps,
        resolution=settings.size,
        buckets=False,  # square swatches
        max_grad_norm=0.0,  # as the demo was tuned: unclipped
        sample_count=0,
        num_workers=0,  # the swatches are tiny: decoding them in the training process is faster
    )
    config = RunConfig(
        checkpoint=out / "toy-base",
        dataset=out / "data",
        output_dir=out / "adapter",
        dimensions=DIMENSIONS,
        train=options,
        name="toy-vmix",
    )
    examples = load_dataset(config.dataset, [d.name for d in DIMENSIONS])
    log(f"[toy] training the VMix adapter with the trainer ({settings.adapter_steps} steps)")
    trainer = Trainer(config, base, examples, device="cpu", progress=False, log=log)
    adapter_path = trainer.run()
    adapter = load_adapter(adapter_path).eval()  # measure what the file holds, not the in-memory module
    log(f"[toy] sampling {settings.samples} images per setting")
    base_means, off, on, sweep, noise, columns = measure(base, adapter, settings)
    grid_path = out / "lambda-sweep.png"
    sheet = grid(columns, gap=1)
    sheet.resize((sheet.width * 8, sheet.height * 8), Image.Resampling.NEAREST).save(grid_path)
    return ToyResult(base_means, off, on, sweep, noise, adapter_path, grid_path, time.perf_counter() - start)


def report(result: ToyResult) -> str:
    header = "property   base    dim off  dim on   seed noise (1 s.e.)   λ sweep "
    lines = [header + " ".join(f"{x:>6}" for x in LAMBDAS)]
    for name in PROPERTIES:
        sweep = " ".join(f"{v:6.3f}" for v in result.sweep[name])
        lines.append(
            f"{name:<10} {result.base[name]:6.3f}  {result.off[name]:7.3f}  {result.on[name]:6.3f}   "
            f"{result.noise[name]:8.4f}              {sweep}"
        )
    lines.append(f"grid (columns: bright at λ {LAMBDAS}, then warm): {result.grid_path}")
    lines.append(f"adapter: {result.adapter_path}; total time {result.seconds:.0f} s")
    return "\n".join(lines)


def seed_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not {SEED_RANGE}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vmix_train.toy", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="toy-run", help="folder for the dataset, adapter and grid (default toy-run)")
    parser.add_argument("--quick", action="store_true", help="the smaller run the test suite uses")
    parser.add_argument("--seed", type=seed_number, default=0, help=f"{SEED_RANGE} (default 0)")
    args = parser.parse_args(argv)
    settings = replace(QUICK if args.quick else ToySettings(), seed=args.seed)
    print(report(run_toy(args.out, settings)))


if __name__ == "__main__":
    main()
