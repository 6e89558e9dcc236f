"""What one VMix training step costs against a frozen UNet's forward and backward: time and peak memory; and, with
``--data-path``, what the data path adds: training steps per second with the latent and text caches and without.

Run from anywhere: ``python benchmarks/bench_train_step.py [--model sd15|sdxl] [--device cpu|cuda] [--rounds N]
[--gradient-checkpointing] [--dtype bfloat16]``, or ``python benchmarks/bench_train_step.py --data-path
[--device cpu|cuda] [--images N] [--workers N] [--steps-per-round N] [--rounds N]``.
The Markdown report goes to stdout (paste it into the README); progress goes to stderr.

Data path (``--data-path``, SD 1.5 only): the real ``Trainer`` on the same SD 1.5 UNet as above, with SD 1.5's VAE
and CLIP ViT-L text encoder (diffusers/transformers, random weights), on a folder of JPEG images twice the training
size in three aspect ratios (aspect-ratio buckets on). Two trainers share the frozen model: one with ``cache = true``
(after its one-time caching pass, timed on its own, every step reads latents and text outputs from the shards), one
with ``cache = false`` (DataLoader workers decode each step's images ahead, the VAE and the text encoder run every
step). Their steps are timed in interleaved rounds; the report gives seconds per step and steps per second side by
side.

Two variants on the same batch (the same latents, noise, timesteps, context) and the same diffusers
``UNet2DConditionModel``, SD 1.5's or SDXL base's (``--model``; random weights, nothing downloaded; SDXL's with its
pooled-text and size conditioning), all of whose weights are frozen:

baseline  the noisy latents made to require grad, the UNet's forward, the ε-prediction MSE loss, backward. The
          UNet's weights get no gradient, so this backward carries the gradient through the whole UNet down to its
          input, which is what VMix's backward must do too: its W_Va sit in every cross-attention layer;
VMix      the trainer's step: ``VMixTrainingStep.loss`` (VMix's value mixing hooked into every ``attn2.to_v``, 3
          aesthetic dimensions, per-row labels), backward, one AdamW step over the adapter's trainable parameters.

Times are taken in this process, interleaved round by round (baseline, VMix, VMix, baseline, ...) after warm-up,
so machine drift hits both alike. Peak memory is measured in a fresh child process per variant (this script, run
with a hidden flag): on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, on the CPU the
peak resident set size (``ru_maxrss``) minus the resident size once the model was built; both are the step's own
working memory, the model's weights excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from vmix_ext.adapter import Dimension, VMixAdapter
from vmix_ext.layers import cross_attention_layers
from vmix_train.step import Batch, VMixTrainingStep

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, when run from elsewhere
from machine import Load, cpu_model

TOKENS = 77
CONTEXT_DIM = {"sd15": 768, "sdxl": 2048}
FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}
MODEL_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL base"}
NATIVE_LATENT = {"sd15": 64, "sdxl": 128}  # 512 and 1024 pixels
CPU_LATENT = {"sd15": 32, "sdxl": 16}  # smaller, so a CPU run takes minutes
DIMENSIONS = (
    Dimension("color", "vivid colour", "sks1"),
    Dimension("lighting", "natural lighting", "sks2"),
    Dimension("focus", "sharp focus", "sks3"),
)
VARIANTS = ("baseline", "vmix")
LABELS = {
    "baseline": "frozen UNet: forward + backward (grad to the input latents)",
    "vmix": "VMix training step: loss + backward + AdamW",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MEMORY_STEPS = 2  # steps run by each memory child: the second one holds AdamW's state as every later step does
MEMORY_FLAG = "--_memory-child"
QUIET = 0.2  # CPUs busy with other processes below which a round counts as undisturbed


# -- the model ------------------------------------------------------------------------------------------------


def build_unet(model: str, seed: int) -> nn.Module:
    """SD 1.5's or SDXL base's UNet (diffusers layout and config, as the trainer loads them), random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if model == "sdxl":
        return UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            cross_attention_dim=CONTEXT_DIM["sdxl"],
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            norm_num_groups=32,
        )
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM["sd15"],
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_scheduler() -> Any:
    """SD 1.5's training noise schedule (ε prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )


@dataclass
class Setup:
    unet: nn.Module
    step: VMixTrainingStep
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    batch: Batch
    device: torch.device
    dtype: torch.dtype
    trainable: int
    layers: int
    unet_params: int


def build(args: argparse.Namespace, variant: str | None = None) -> Setup:
    """The frozen UNet (in ``args.dtype``), the fp32 adapter, the training step, AdamW and one fixed batch.

    ``variant`` builds only what that variant needs (the memory children); None builds both (the timing run).
    """
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    unet = build_unet(args.model, args.seed).requires_grad_(False).eval()
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    unet.to(device)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    layers = len(cross_attention_layers(unet))
    unet_params = sum(p.numel() for p in unet.parameters())

    generator = torch.Generator().manual_seed(args.seed + 1)
    width, family = CONTEXT_DIM[args.model], FAMILY[args.model]
    positive = torch.randn(len(DIMENSIONS), width, generator=generator)
    negative = torch.randn(len(DIMENSIONS), width, generator=generator)
    if variant == "baseline":
        # The child measuring the baseline needs no adapter; a one-layer stand-in keeps the objects below uniform.
        adapter = VMixAdapter(DIMENSIONS, width, {"unused": 1}, family)
    else:
        adapter = VMixAdapter.untrained(unet, DIMENSIONS, positive, negative, family)
    adapter.to(device, torch.float32)  # the trainer keeps the adapter in fp32 whatever the precision
    scheduler = build_scheduler()
    step = VMixTrainingStep(unet, adapter, scheduler)
    params = [p for p in adapter.parameters() if p.requires_grad]
    # The trainer's defaults (vmix_train/config.py).
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    batch_generator = torch.Generator().manual_seed(args.seed + 2)
    b, side = args.batch, args.latent
    added = None
    if args.model == "sdxl":  # the pooled text and the (original size, crop corner, target size) conditioning
        pixels = float(side * 8)
        added = {
            "text_embeds": torch.randn(b, 1280, generator=batch_generator).to(device, dtype),
            "time_ids": torch.tensor([[pixels, pixels, 0.0, 0.0, pixels, pixels]] * b, device=device),
        }
    batch = Batch(
        latents=torch.randn(b, 4, side, side, generator=batch_generator).to(device, dtype),
        context=torch.randn(b, TOKENS, width, generator=batch_generator).to(device, dtype),
        strengths=torch.randint(0, 2, (b, len(DIMENSIONS)), generator=batch_generator).float().to(device),
        noise=torch.randn(b, 4, side, side, generator=batch_generator),
        timesteps=torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=batch_generator),
        added=added,
    )
    return Setup(
        unet=unet,
        step=step,
        optimizer=optimizer,
        scaler=scaler,
        batch=batch,
        device=device,
        dtype=dtype,
        trainable=sum(p.numel() for p in params) if variant != "baseline" else 0,
        layers=layers,
        unet_params=unet_params,
    )


# -- the two steps ----------------------------------------------------------------------------------------------


def autocast(setup: Setup) -> contextlib.AbstractContextManager[Any]:
    if setup.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(setup.device.type, dtype=setup.dtype)


def baseline_step(setup: Setup) -> float:
    """The frozen UNet's forward and backward of the same loss as the trainer's, without VMix."""
    step, batch = setup.step, setup.batch
    latents = batch.latents
    noise = batch.noise.to(latents.device, latents.dtype)
    timesteps = batch.timesteps.to(latents.device)
    with autocast(setup):
        noisy = step.scheduler.add_noise(latents, noise, timesteps).requires_grad_(True)
        prediction = setup.unet(
            noisy, timesteps, encoder_hidden_states=batch.context, added_cond_kwargs=batch.added
        ).sample
        loss = F.mse_loss(prediction.float(), noise.float())
    loss.backward()
    return loss.item()


def vmix_step(setup: Setup) -> float:
    """What ``Trainer.train_step`` does for one micro-batch: loss, backward, optimizer step, zero_grad."""
    with autocast(setup):
        loss = setup.step.loss(setup.batch)
    if setup.scaler is not None:
        setup.scaler.scale(loss).backward()
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        loss.backward()
        setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    return loss.item()


STEPS = {"baseline": baseline_step, "vmix": vmix_step}


def use(setup: Setup, variant: str) -> None:
    """Hooks on for VMix, off for the baseline; done outside the timed region (the trainer attaches once)."""
    mixer = setup.step._mixer  # created by the first VMix step
    if mixer is None:
        return
    if variant == "vmix":
        mixer.attach(setup.unet)
    else:
        mixer.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(setup: Setup, variant: str) -> tuple[float, float]:
    use(setup, variant)
    synchronize(setup.device)
    start = time.perf_counter()
    loss = STEPS[variant](setup)  # .item() waits for the GPU as well
    synchronize(setup.device)
    return time.perf_counter() - start, loss


# -- peak memory, in a child process per variant ----------------------------------------------------------------


def current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def reset_rss_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux ≥ 4.0), so a peak while building cannot hide the step's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> None:
    """Build, note the memory in use, run ``MEMORY_STEPS`` steps of one variant, print the figures as JSON."""
    variant = args._memory_child
    setup = build(args, variant)
    gc.collect()
    result: dict[str, Any] = {"variant": variant}
    if setup.device.type == "cuda":
        synchronize(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
        before = torch.cuda.memory_allocated(setup.device)
        for _ in range(MEMORY_STEPS):
            STEPS[variant](setup)
        synchronize(setup.device)
        peak = torch.cuda.max_memory_allocated(setup.device)
        result |= {"peak_mib": (peak - before) / 2**20, "total_peak_mib": peak / 2**20, "model_mib": before / 2**20}
    else:
        before = current_rss_kib()
        result["reset"] = reset_rss_peak()
        result["maxrss_before_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(MEMORY_STEPS):
            STEPS[variant](setup)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result |= {
            "peak_mib": (peak - before) / 1024,
            "total_peak_mib": peak / 1024,
            "model_mib": before / 1024,
            "rose": peak > result["maxrss_before_kib"],
        }
    print(json.dumps(result), flush=True)


def measure_memory(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], MEMORY_FLAG, variant]
    # The options the parent filled in from the device are passed on explicitly, so the child measures the same run.
    command += ["--device", args.device, "--latent", str(args.latent), "--batch", str(args.batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory child for {variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- reporting --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {threads} torch thread{'s' if threads != 1 else ''})"


def mib(value: float) -> str:
    return "not measured" if math.isnan(value) else f"{value:.0f} MiB"


def report(
    args: argparse.Namespace,
    setup: Setup,
    times: dict[str, list[float]],
    memory: dict[str, dict[str, Any]],
    losses: dict[str, float],
    round_load: list[float],
    wall: float,
) -> str:
    ms = {v: [t * 1000 for t in times[v]] for v in VARIANTS}
    med = {v: statistics.median(ms[v]) for v in VARIANTS}
    ratio = med["vmix"] / med["baseline"]
    paired = [v / b for b, v in zip(times["baseline"], times["vmix"], strict=True)]
    pixels = args.latent * 8
    ckpt = "on" if args.gradient_checkpointing else "off"
    lines = [
        f"### One VMix training step against a frozen UNet's forward + backward ({args.device}, {args.dtype})",
        "",
        f"torch {torch.__version__} · {device_name(setup.device)} · {MODEL_NAMES[args.model]} UNet (diffusers, "
        "random weights, "
        f"{setup.unet_params / 1e6:.0f} M parameters, {setup.layers} cross-attention layers) · batch {args.batch} · "
        f"{args.latent}×{args.latent} latent ({pixels}×{pixels} pixels) · 77 context tokens · gradient checkpointing "
        f"{ckpt} · median of {args.rounds} interleaved round{'s' if args.rounds != 1 else ''} after {args.warmup} "
        f"warm-up round{'s' if args.warmup != 1 else ''}",
        "",
        "| Variant | ms / step (median) | min–max | × baseline | peak memory of the step |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        lines.append(
            f"| {LABELS[variant]} | {med[variant]:.1f} | {min(ms[variant]):.1f}–{max(ms[variant]):.1f} "
            f"| {med[variant] / med['baseline']:.3f} | {mib(memory[variant]['peak_mib'])} |"
        )
    min_ratio = min(ms["vmix"]) / min(ms["baseline"])
    paired_median = statistics.median(paired)
    quiet = [ratio_ for ratio_, load in zip(paired, round_load, strict=True) if load <= QUIET]
    disturbed = statistics.median(round_load) > QUIET
    verdict = (
        f"**{'met' if ratio <= 1.1 else 'missed'}**: VMix step / baseline = {ratio:.3f}× (ratio of the medians); "
        f"ratio of the fastest steps {min_ratio:.3f}×, median of the per-round ratios {paired_median:.3f}×"
    )
    if disturbed:
        verdict += "; other processes were busy during most rounds, so rerun on an idle machine before relying on it"
    elif min(paired) <= 1.1 < max(paired):
        verdict += "; the per-round ratios straddle 1.1×, so this verdict is within this machine's noise"
    lines += ["", f"Target ≤ 1.1×: {verdict}.", "", "Notes:", ""]
    per_round = ", ".join(f"{ratio_:.3f} ({load:.2f})" for ratio_, load in zip(paired, round_load, strict=True))
    quiet_line = f"Rounds with other processes below {QUIET} CPUs: {len(quiet)} of {len(paired)}" + (
        f", their median ratio {statistics.median(quiet):.3f}." if quiet else "."
    )
    lines.append(
        "- Per-round VMix / baseline ratios (each round times both back to back, the order alternating), with the "
        f"CPUs other processes kept busy during the round in brackets: {per_round}. {quiet_line} The fastest step "
        "of each variant is the one least slowed by other processes."
    )
    lines.append(
        "- Baseline: all UNet weights are frozen, so the noisy latents are made to require grad; backward then carries "
        "the gradient through the whole UNet to its input, as VMix's backward must reach the W_Va of every "
        "cross-attention layer (VMix's stops at the first one and skips what lies before it). Neither computes "
        "gradients for the UNet's weights."
    )
    lines.append(
        f"- VMix: `VMixTrainingStep.loss` with the adapter's value mixing in all {setup.layers} `attn2.to_v` "
        f"(3 dimensions, per-row 0/1 labels), backward, `AdamW.step` over the adapter's "
        f"{setup.trainable / 1e6:.1f} M trainable fp32 parameters (F, Z and every W_Va), `zero_grad`; the hooks "
        "are attached outside the timed region, as the trainer attaches them once. Its first loss equals the "
        f"baseline's (Z starts at zero): {losses['vmix_first']:.6f} vs {losses['baseline']:.6f}."
    )
    if args.no_memory:
        lines.append("- Peak memory: not measured (`--no-memory`).")
    elif args.device == "cuda":
        lines.append(
            "- Peak memory: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was "
            f"allocated once the model was built, over {MEMORY_STEPS} steps in a fresh process per variant "
            f"(so VMix's figure includes AdamW's state and the adapter's gradients). Total peaks: baseline "
            f"{memory['baseline']['total_peak_mib']:.0f} MiB, VMix {memory['vmix']['total_peak_mib']:.0f} MiB "
            f"(model: {memory['baseline']['model_mib']:.0f} / {memory['vmix']['model_mib']:.0f} MiB)."
        )
    else:
        lines.append(
            "- Peak memory: peak resident set size (`ru_maxrss`) minus the resident size once the model was built, "
            f"over {MEMORY_STEPS} steps in a fresh process per variant (so VMix's figure includes AdamW's state and "
            "the adapter's gradients; the adapter's own weights count as model). Whole-process peaks: baseline "
            f"{memory['baseline']['total_peak_mib']:.0f} MiB, VMix {memory['vmix']['total_peak_mib']:.0f} MiB "
            f"(after building: {memory['baseline']['model_mib']:.0f} / {memory['vmix']['model_mib']:.0f} MiB). "
            "RSS counts whole pages the allocator still holds, so it is coarser than a CUDA allocator figure."
        )
        for variant in VARIANTS:
            if not memory[variant]["rose"]:
                lines.append(
                    f"- Warning: {variant}'s peak RSS did not rise during the steps (the high-water mark could not be "
                    "reset after building), so its figure is an upper bound set by the build."
                )
    if args.dtype != "float32":
        lines.append(
            f"- {args.dtype}: the frozen UNet's weights in {args.dtype}, the loss under `torch.autocast`, the adapter "
            "and AdamW in fp32, as the trainer runs mixed precision"
            f"{' (with a GradScaler for fp16)' if args.dtype == 'float16' else ''}."
        )
    native = NATIVE_LATENT[args.model]
    if args.latent != native:
        lines.append(
            f"- Latent reduced from {native}×{native} ({MODEL_NAMES[args.model]}'s {native * 8} pixels) to "
            f"{args.latent}×{args.latent} to keep the run within minutes on this machine; attention sees fewer query "
            "tokens than at full size."
        )
    lines.append(f"- Whole run, memory children included: {wall:.0f} s.")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(CONTEXT_DIM), default="sd15", help="the UNet: SD 1.5's or SDXL's")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--latent", type=int, default=None, help="latent side (GPU: native; CPU: 32 or 16)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 1 on CPU, 4 on GPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default 1)")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="the frozen UNet's dtype; bfloat16/float16 run the loss under autocast with the adapter in fp32",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="unet.enable_gradient_checkpointing()")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-path", action="store_true", help="steps/s with and without the caches (SD 1.5)")
    parser.add_argument("--images", type=int, default=8, help="--data-path: images in the dataset (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="--data-path: DataLoader workers (default 2)")
    parser.add_argument("--steps-per-round", type=int, default=2, help="--data-path: steps per timed round")
    parser.add_argument(MEMORY_FLAG, dest="_memory_child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.dtype == "float16" and args.device != "cuda":
        parser.error("--dtype float16 needs CUDA (the trainer refuses fp16 elsewhere); use bfloat16")
    gpu = args.device == "cuda"
    args.latent = args.latent or (NATIVE_LATENT[args.model] if gpu else CPU_LATENT[args.model])
    args.batch = args.batch or (4 if gpu else 1)
    args.rounds = args.rounds or (20 if gpu else 5)
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be at least 1 (the warm-up attaches VMix and fills AdamW's state)")
    if args.latent % 8:
        parser.error("--latent must be a multiple of 8 (the UNet halves it three times)")
    if args.data_path and args.model != "sd15":
        parser.error("--data-path measures the SD 1.5 setup; leave --model at sd15")
    if args.data_path and (args.images < 1 or args.workers < 0 or args.steps_per_round < 1):
        parser.error("--images and --steps-per-round must be at least 1, --workers at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


# -- the data path: steps/s with and without the caches -----------------------------------------------------------


def build_sd15_base(seed: int) -> Any:
    """SD 1.5's UNet, VAE and CLIP ViT-L text encoder (diffusers/transformers configs as the trainer loads them),
    random weights, with the toy's character tokenizer (no tokenizer files needed)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from vmix_train.model import BaseModel
    from vmix_train.toy import BOS, EOS, tokenize

    unet = build_unet("sd15", seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
    )
    base = BaseModel(unet, text, tokenize, EOS, build_scheduler(), "sd1", vae=vae, name="random SD 1.5", hash="bench")
    return base.freeze()


def write_images(folder: Path, count: int, side: int, seed: int) -> None:
    """JPEGs (quality 90) twice the training side, landscape, square and portrait in turn, with noise so they do
    not compress to nothing; captions of a few words; labels alternating."""
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    shapes = [(2 * side * 4 // 3, 2 * side), (2 * side, 2 * side), (2 * side, 2 * side * 4 // 3)]
    lines = []
    for i in range(count):
        width, height = shapes[i % 3]
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:04d}.jpg", quality=90)
        labels = {d.name: (i + j) % 2 == 0 for j, d in enumerate(DIMENSIONS)}
        caption = f"a photo of a scene number {i} with a house and a tree"
        lines.append(json.dumps({"file_name": f"{i:04d}.jpg", "caption": caption, "labels": labels}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def data_path(args: argparse.Namespace) -> None:
    import tempfile

    from vmix_train.config import RunConfig, TrainingOptions
    from vmix_train.dataset import load_dataset
    from vmix_train.loop import Trainer

    start = time.perf_counter()
    side = args.latent * 8
    with tempfile.TemporaryDirectory(prefix="vmix-bench-data-") as root:
        folder = Path(root) / "data"
        write_images(folder, args.images, side, args.seed)
        examples = load_dataset(folder, [d.name for d in DIMENSIONS])
        log("[data] building SD 1.5's UNet, VAE and text encoder ...")
        base = build_sd15_base(args.seed)
        # Warm-up: a whole epoch per trainer, so every bucket's shapes have been through the UNet and the VAE once
        # (the first step at a new shape is slow: oneDNN and cuDNN choose their kernels for it).
        epoch = math.ceil(args.images / args.batch)  # an upper bound on the steps of one epoch
        total = args.warmup * epoch + args.rounds * args.steps_per_round + 1

        def trainer(cache: bool) -> Trainer:
            options = TrainingOptions(
                steps=total,
                batch_size=args.batch,
                resolution=side,
                mixed_precision={"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[args.dtype],
                cache=cache,
                num_workers=args.workers,
                sample_count=0,
                save_every=10**6,
                seed=args.seed,
            )
            out = Path(root) / ("cached" if cache else "uncached")
            config = RunConfig(Path("random-sd15"), folder, out, DIMENSIONS, options)
            return Trainer(config, base, examples, device=args.device, progress=False, log=log)

        trainers = {"cached": trainer(True), "uncached": trainer(False)}
        began = time.perf_counter()
        trainers["cached"].open_data()  # the one-time caching pass: every image through the VAE, every caption
        caching = time.perf_counter() - began
        cache_bytes = sum(p.stat().st_size for p in (folder / "vmix-cache").glob("*.safetensors"))
        log(f"[data] caching pass: {caching:.1f} s for {args.images} images ({cache_bytes / 2**20:.1f} MiB)")
        trainers["uncached"].open_data()  # starts the workers
        buckets = trainers["cached"].data.bucket_counts()
        seconds: dict[str, list[float]] = {"cached": [], "uncached": []}
        round_load: list[float] = []  # CPUs kept busy by other processes during each timed round
        try:
            for r in range(args.warmup + args.rounds):
                load = Load()
                order = ("cached", "uncached") if r % 2 == 0 else ("uncached", "cached")
                for name in order:
                    t = trainers[name]
                    steps = t.data.plan.steps_per_epoch if r < args.warmup else args.steps_per_round
                    synchronize(t.device)
                    began = time.perf_counter()
                    for _ in range(steps):
                        t.train_step()
                    synchronize(t.device)
                    elapsed = (time.perf_counter() - began) / steps
                    t.step_fn.close()  # the two trainers share the UNet: only one may be hooked at a time
                    if r >= args.warmup:
                        seconds[name].append(elapsed)
                if r >= args.warmup:
                    round_load.append(load.others_cores())
                done = " ".join(f"{n}={seconds[n][-1]:.2f}s/step" for n in seconds if seconds[n])
                log(f"[data] round {r + 1}/{args.warmup + args.rounds} {done if r >= args.warmup else '(warm-up)'}")
        finally:
            for t in trainers.values():
                t.close_data()
    wall = time.perf_counter() - start
    print(data_path_report(args, seconds, caching, cache_bytes, buckets, round_load, wall))


def data_path_report(
    args: argparse.Namespace,
    seconds: dict[str, list[float]],
    caching: float,
    cache_bytes: int,
    buckets: dict[Any, int],
    round_load: list[float],
    wall: float,
) -> str:
    side = args.latent * 8
    labels = {
        "cached": "cached: latents and text outputs read from the shards",
        "uncached": f"uncached: {args.workers} DataLoader worker(s) decode, VAE + text encoder every step",
    }
    lines = [
        f"### Training steps per second with and without the caches ({args.device}, {args.dtype})",
        "",
        f"torch {torch.__version__} · {device_name(torch.device(args.device))} · SD 1.5 UNet, VAE and CLIP ViT-L "
        f"(random weights) · batch {args.batch} · {side}² px in buckets "
        f"({', '.join(f'{b.label}: {n}' for b, n in sorted(buckets.items()))}) · {args.images} JPEGs twice that size "
        f"· median of {args.rounds} interleaved rounds of {args.steps_per_round} steps after {args.warmup} warm-up "
        "epoch(s) (every bucket's shapes once)",
        "",
        "| data path | s / step (median) | min–max | steps / s |",
        "|---|---:|---:|---:|",
    ]
    for name in ("cached", "uncached"):
        values = seconds[name]
        median = statistics.median(values)
        lines.append(f"| {labels[name]} | {median:.2f} | {min(values):.2f}–{max(values):.2f} | {1 / median:.3f} |")
    ratio = statistics.median(seconds["uncached"]) / statistics.median(seconds["cached"])
    busy = statistics.median(round_load) > QUIET
    advice = "; rerun on an idle machine before relying on the figures." if busy else "."
    lines += [
        "",
        f"Uncached / cached time per step: {ratio:.2f}×. The cached run's one-time caching pass took {caching:.1f} s "
        f"for {args.images} images and {args.images + 1} captions ({cache_bytes / 2**20:.1f} MiB of shards); a "
        "second run of the same data skips it.",
        f"CPUs kept busy by other processes during the timed rounds: {', '.join(f'{x:.2f}' for x in round_load)}"
        + advice,
        f"Whole run: {wall:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args._memory_child:
        memory_child(args)
        return
    if args.data_path:
        data_path(args)
        return
    start = time.perf_counter()

    memory: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        if args.no_memory:
            memory[variant] = {"peak_mib": math.nan, "total_peak_mib": math.nan, "model_mib": math.nan, "rose": True}
            continue
        log(f"[memory] {variant}: a fresh process, {MEMORY_STEPS} steps ...")
        began = time.perf_counter()
        memory[variant] = measure_memory(args, variant)
        log(f"[memory] {variant}: {memory[variant]['peak_mib']:.0f} MiB ({time.perf_counter() - began:.0f} s)")

    log("[time] building the UNet ...")
    began = time.perf_counter()
    setup = build(args)
    log(f"[time] built in {time.perf_counter() - began:.0f} s")
    losses: dict[str, float] = {}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rounds = args.warmup + args.rounds
    round_load: list[float] = []  # CPUs kept busy by other processes during each timed round
    for r in range(rounds):
        load = Load()
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            elapsed, loss = timed(setup, variant)
            if r < args.warmup:
                key = "vmix_first" if variant == "vmix" else variant
                losses.setdefault(key, loss)
            else:
                times[variant].append(elapsed)
        if r < args.warmup:
            log(f"[time] round {r + 1}/{rounds} (warm-up)")
            continue
        round_load.append(load.others_cores())
        done = " ".join(f"{v}={times[v][-1]:.2f}s" for v in VARIANTS)
        log(f"[time] round {r + 1}/{rounds} {done} (other processes: {round_load[-1]:.2f} CPUs)")
    setup.step.close()
    print(report(args, setup, times, memory, losses, round_load, time.perf_counter() - start))


if __name__ == "__main__":
    main()
