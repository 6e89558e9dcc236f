"""The training loop: batches, gradient accumulation, mixed precision, checkpoints, resume, samples, loss curve.

Every random choice that depends on the data (the epoch's order, caption dropout, the noise and timestep of each
image) is drawn from a generator seeded by the run's seed and the image's position in the run, not from a running
random state. A resumed run therefore continues exactly where the killed one stopped, with nothing to restore but the
weights, the optimizer and the step; and the stream of batches does not depend on how many processes share it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vmix_ext.adapter import VMixAdapter
from vmix_ext.weights import save_adapter
from vmix_train.config import RunConfig, TrainingOptions
from vmix_train.dataset import Example
from vmix_train.distributed import World, agree, barrier, mean_across
from vmix_train.embeddings import aesthetic_embeddings
from vmix_train.lora import LoraSet, webui_layout_problem
from vmix_train.model import BaseModel
from vmix_train.plot import save_loss_curve
from vmix_train.sampling import grid, sample
from vmix_train.state import STATE_FILE, TrainingState, fingerprint_differences, load_state, save_state
from vmix_train.step import Batch, VMixTrainingStep

PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
_STREAMS = {"order": 1, "dropout": 2, "noise": 3, "latent": 4}  # separate seeds for separate decisions


class TrainingError(RuntimeError):
    pass


class Trainables(torch.nn.Module):
    """Everything the run trains, in one module: the adapter, and the LoRA when there is one. Calling it gives V_a
    (the LoRA acts through its hooks inside the UNet), so DistributedDataParallel can wrap this one module and
    average all its gradients."""

    def __init__(self, adapter: VMixAdapter, lora: LoraSet | None) -> None:
        super().__init__()
        self.adapter = adapter
        self.lora = lora

    def forward(self, strengths: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.adapter(strengths)


def stream(seed: int, kind: str, index: int) -> torch.Generator:
    """A generator for one decision about one image (or epoch); the same inputs always give the same numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + _STREAMS[kind]) * 2_147_483_647 + index)


def load_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int, int, int]]:
    """RGB in [-1, 1], (3, size, size): the shorter side resized to ``size``, then the centre cut out; and SDXL's
    size conditioning for it: (original height, original width, crop top, crop left, size, size), the crop's
    corner counted in the resized image, as SDXL was trained (sgm's original_size_as_tuple, crop_coords_top_left
    and target_size_as_tuple)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        original = (image.height, image.width)
        scale = size / min(image.size)
        resized = image.resize(
            (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BICUBIC
        )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1, (*original, top, left, size, size)


class Trainer:
    """Trains one VMix adapter on ``base`` (frozen) from ``examples``; ``run()`` writes the files to the output folder.

    Output folder: ``<name>.safetensors`` (the adapter, for models/VMix), ``<name>-step<N>.safetensors`` snapshots,
    ``training-state.safetensors`` (for resuming), ``samples/step-<N>.png`` (VMix off | on), ``loss.png``; with
    ``lora_rank`` > 0 also ``<name>-lora.safetensors`` (a standard LoRA file, for models/Lora) and its snapshots.
    """

    def __init__(
        self,
        config: RunConfig,
        base: BaseModel,
        examples: Sequence[Example],
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        world: World | None = None,
    ) -> None:
        self.config = config
        # learning_rate and resolution 0 become the family's: 1e-5 and 1024 for SDXL, …
        self.options = config.train.for_model(base.family, base.scheduler.config.prediction_type)
        self.base = base
        self.examples = list(examples)
        self.world = world or World()
        self.progress = progress and self.world.is_main
        self.log = log if self.world.is_main else (lambda _message: None)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.accumulation = self._accumulation()
        self.precision = PRECISION[self.options.mixed_precision]
        if self.precision is torch.float16 and self.device.type != "cuda":
            raise TrainingError('mixed_precision = "fp16" needs a CUDA GPU; use "bf16" or "no" on this device')
        if not self.examples:
            raise TrainingError("the dataset is empty")
        # The frozen UNet and text encoder run in the mixed-precision dtype (half the memory); the VAE stays in
        # float32 (SD's VAE overflows in fp16) and only runs once per image, its latents being cached.
        base.freeze()
        for module in (base.unet, *base.text_encoders):
            _move(module, self.device, self.precision or torch.float32)
        if base.vae is not None:
            _move(base.vae, self.device, torch.float32)
        if self.options.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
        positive, negative = aesthetic_embeddings(config.dimensions, base)
        with torch.random.fork_rng(devices=[]):  # F's initial weights come from the run's seed: runs repeat
            torch.manual_seed(self.options.seed)
            self.adapter = VMixAdapter.untrained(base.unet, config.dimensions, positive, negative, base.family)
        self.adapter.to(self.device, torch.float32)
        self.lora: LoraSet | None = None
        if self.options.lora_rank:
            self.lora = LoraSet(base.unet, self.options.lora_rank, seed=self.options.seed).to(self.device)
            self.lora.attach(base.unet)
            problem = webui_layout_problem(base.unet)
            if problem:
                self.log(f"[VMix] warning: {problem}")
        self.trainables = Trainables(self.adapter, self.lora)
        self.wrapped: torch.nn.Module | None = None
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # DDP averages the gradients over the processes during backward (the adapter's buffers, AesEmb, are
            # the same everywhere and never change, so they are not re-broadcast).
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.trainables, device_ids=device_ids, broadcast_buffers=False)
        self.step_fn = VMixTrainingStep(base.unet, self.adapter, base.scheduler, self.wrapped)
        self.trainable = {name: p for name, p in self.trainables.named_parameters() if p.requires_grad}
        self.optimizer = make_optimizer(list(self.trainable.values()), self.options)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision is torch.float16 else None
        self.losses: list[float] = []
        self.step = 0
        self._latents: dict[int, torch.Tensor] = {}
        self._sizes: dict[int, tuple[int, ...]] = {}  # each image's SDXL size conditioning (``load_image``)
        self.on_step: Callable[[int], None] | None = None  # called after each optimizer step (tests, monitors)

    def _accumulation(self) -> int:
        """Micro-batches per optimizer step in each process: from the global batch size when the config gives one."""
        o, processes = self.options, self.world.size
        if not o.global_batch_size:
            return o.gradient_accumulation
        per_round = o.batch_size * processes
        if o.global_batch_size % per_round:
            raise TrainingError(
                f"global_batch_size {o.global_batch_size} is not a multiple of batch_size {o.batch_size} × "
                f"{processes} process(es) = {per_round}; change one of them"
            )
        return o.global_batch_size // per_round

    @property
    def global_batch(self) -> int:
        return self.options.batch_size * self.accumulation * self.world.size

    # -- files -------------------------------------------------------------------------------------------------

    @property
    def output_dir(self) -> Path:
        return self.config.output_dir

    @property
    def adapter_path(self) -> Path:
        return self.output_dir / f"{self.config.adapter_name}.safetensors"

    @property
    def lora_path(self) -> Path:
        return self.output_dir / f"{self.config.adapter_name}-lora.safetensors"

    def save_lora(self, path: Path) -> None:
        if self.lora is None:
            return
        self.lora.save(
            path,
            {
                "ss_output_name": path.stem,
                "ss_sd_model_name": self.base.name,
                "ss_resolution": f"({self.options.resolution}, {self.options.resolution})",
                "ss_clip_skip": str(self.base.clip_skip),
                "ss_steps": str(self.step),
                "vmix_adapter": self.adapter_path.name,  # the VMix adapter trained together with this LoRA
            },
        )

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        o = self.options
        facts = {
            "base": self.base.hash or self.base.name,
            "dimensions": [d.__dict__ for d in self.config.dimensions],
            "images": len(self.examples),
            "global_batch": self.global_batch,  # how it is split over processes and micro-batches may change
            "resolution": o.resolution,
            "seed": o.seed,
            "lora_rank": o.lora_rank,
            "clip_skip": self.base.clip_skip,
        }
        return json.loads(json.dumps(facts))

    def training_facts(self) -> dict[str, Any]:
        o = self.options
        return {
            "steps": self.step,
            "base_checkpoint": self.base.name,
            "base_hash": self.base.hash,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "images": len(self.examples),
            "batch_size": self.global_batch,
            "learning_rate": o.learning_rate,
            "resolution": o.resolution,
            "clip_skip": self.base.clip_skip,
        }

    def save_checkpoint(self) -> None:
        """The adapter snapshot, then the training state; each written atomically, by the main process only."""
        if not self.world.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        snapshot = self.output_dir / f"{self.config.adapter_name}-step{self.step:06d}.safetensors"
        save_adapter(self.adapter, snapshot, self.training_facts())
        self.save_lora(self.output_dir / f"{self.config.adapter_name}-lora-step{self.step:06d}.safetensors")
        state = TrainingState(
            step=self.step,
            weights={name: p.detach() for name, p in self.trainable.items()},
            optimizer=self.optimizer.state_dict(),
            losses=list(self.losses),
            fingerprint=self.fingerprint(),
        )
        save_state(state, self.output_dir / STATE_FILE)

    def resume(self) -> bool:
        """Continue from the output folder's training state, if there is one. Refuses a state from another run."""
        path = self.output_dir / STATE_FILE
        if not path.is_file():
            return False
        state = load_state(path)
        differences = fingerprint_differences(state.fingerprint, self.fingerprint())
        if differences:
            raise TrainingError(
                f"'{path}' belongs to a different run ({'; '.join(differences)}). "
                "Choose another [output] folder, or delete that file to start this run afresh."
            )
        missing = sorted(set(self.trainable) - set(state.weights))
        if missing:
            raise TrainingError(f"'{path}' lacks trainable weights {missing[:3]}; delete it to start afresh")
        with torch.no_grad():
            for name, param in self.trainable.items():
                param.copy_(state.weights[name])
        self.optimizer.load_state_dict(state.optimizer)
        self.step = state.step
        self.losses = list(state.losses)
        self.log(f"[VMix] resuming at step {self.step} from {path}")
        return True

    # -- data --------------------------------------------------------------------------------------------------

    def example_index(self, position: int) -> int:
        """The image at ``position`` in the run's stream: epochs in a seeded order, each image once per epoch."""
        count = len(self.examples)
        epoch, offset = divmod(position, count)
        order = torch.randperm(count, generator=stream(self.options.seed, "order", epoch))
        return int(order[offset])

    def latent(self, index: int) -> torch.Tensor:
        cached = self._latents.get(index)
        if cached is None:
            image, self._sizes[index] = load_image(self.examples[index].image, self.options.resolution)
            pixels = image.unsqueeze(0)
            if self.base.vae is None:
                cached = pixels[0]
            else:
                posterior = self.base.vae.encode(pixels.to(self.device)).latent_dist
                generator = stream(self.options.seed, "latent", index)
                noise = torch.randn(posterior.mean.shape, generator=generator).to(self.device)
                cached = (posterior.mean + posterior.std * noise)[0] * self.base.vae.config.scaling_factor
                cached = cached.cpu()
            self._latents[index] = cached
        return cached

    def batch(self, step: int, micro: int) -> Batch:
        """This process's micro-batch ``micro`` of optimizer step ``step``. Step s covers the stream positions
        [s·G, (s+1)·G) for the global batch G, whatever the number of processes, so runs with 1 or n processes and
        the same G see the same images with the same noise."""
        o = self.options
        chunk = micro * self.world.size + self.world.rank
        first = step * self.global_batch + chunk * o.batch_size
        positions = range(first, first + o.batch_size)
        indices = [self.example_index(p) for p in positions]
        captions = []
        for position, index in zip(positions, indices, strict=True):
            drop = torch.rand((), generator=stream(o.seed, "dropout", position)) < o.caption_dropout
            captions.append("" if drop else self.examples[index].caption)
        with torch.no_grad():
            latents = torch.stack([self.latent(i) for i in indices])
        noise, timesteps = [], []
        steps = self.base.scheduler.config.num_train_timesteps
        for position in positions:
            generator = stream(o.seed, "noise", position)
            noise.append(torch.randn(latents.shape[1:], generator=generator))
            timesteps.append(torch.randint(0, steps, (), generator=generator))
        dtype = self.precision or torch.float32
        text = self.base.encode(captions, zero_empty=True)  # dropped captions: SDXL's empty conditioning is zeros
        added = None
        if text.pooled is not None:  # SDXL: the pooled text and each image's size and crop
            sizes = torch.tensor([self._sizes[i] for i in indices], dtype=torch.float32, device=self.device)
            added = {"text_embeds": text.pooled, "time_ids": sizes}
        return Batch(
            latents=latents.to(self.device, dtype),
            context=text.context,
            strengths=torch.tensor([self.examples[i].labels for i in indices], device=self.device),
            noise=torch.stack(noise),
            timesteps=torch.stack(timesteps),
            added=added,
        )

    # -- the loop ----------------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def accumulate_gradients(self) -> float:
        """Backward over the ``gradient_accumulation`` micro-batches of the next step; returns their mean loss."""
        accumulation = self.accumulation
        total = 0.0
        for micro in range(accumulation):
            batch = self.batch(self.step, micro)
            last = micro == accumulation - 1
            # DDP averages gradients across processes once per step, on the last micro-batch's backward.
            sync = contextlib.nullcontext() if last or self.wrapped is None else self.wrapped.no_sync()
            with sync:
                with self.autocast():
                    loss = self.step_fn.loss(batch) / accumulation
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {self.step + 1}; lower the learning rate"
                    )
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        return mean_across(total, self.world, self.device)

    def apply_gradients(self, loss: float) -> None:
        """The optimizer step for the accumulated gradients, which are then cleared; ``loss`` goes in the history."""
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.losses.append(loss)

    def train_step(self) -> float:
        """One optimizer step; returns the step's mean loss."""
        total = self.accumulate_gradients()
        self.apply_gradients(total)
        return total

    def run(self) -> Path:
        """Train (resuming when the output folder holds this run's state) and write the adapter; returns its path."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        if not agree(self.step, self.world, self.device):
            raise TrainingError(
                f"the processes would resume from different steps (this one: {self.step}): the output folder "
                f"{self.output_dir} must be one folder that every machine sees (a shared filesystem)"
            )
        o = self.options
        bar = _progress_bar(o.steps, self.step, self.progress)
        try:
            while self.step < o.steps:
                self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{sum(self.losses[-20:]) / len(self.losses[-20:]):.4f}")
                if self.step % o.save_every == 0 or self.step == o.steps:
                    self.save_checkpoint()
                if o.sample_count and self.step % o.sample_every == 0 and self.world.is_main:
                    self.save_samples()
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            bar.close()
            self.step_fn.close()
            if self.lora is not None:
                self.lora.detach()
        if self.world.is_main:
            save_adapter(self.adapter, self.adapter_path, self.training_facts())
            save_loss_curve(self.losses, self.output_dir / "loss.png")
            self.log(f"[VMix] adapter written to {self.adapter_path}; copy it into the WebUI's models/VMix folder")
            if self.lora is not None:
                self.save_lora(self.lora_path)
                self.log(f"[VMix] LoRA written to {self.lora_path}; copy it into models/Lora, use it with the adapter")
        barrier(self.world)
        return self.adapter_path

    def save_samples(self) -> Path:
        """A grid with one row per sample caption: VMix off | VMix on (every dimension, λ = 1); same seeds."""
        count = min(self.options.sample_count, len(self.examples))
        prompts = [e.caption for e in self.examples[:count]]
        seeds = list(range(count))
        settings = {
            "size": self.options.resolution,
            "steps": self.options.sample_steps,
            "guidance": self.options.sample_guidance,
        }
        self.step_fn.close()  # the training hooks must not add their last batch's values to the samples
        with self.autocast():
            off = sample(self.base, prompts, seeds, **settings)
            on = sample(self.base, prompts, seeds, adapter=self.adapter, **settings)
        folder = self.output_dir / "samples"
        folder.mkdir(exist_ok=True)
        path = folder / f"step-{self.step:06d}.png"
        grid([off, on]).save(path)
        return path


def make_optimizer(params: list[torch.nn.Parameter], options: TrainingOptions) -> torch.optim.Optimizer:
    settings = {
        "lr": options.learning_rate,
        "betas": (options.adam_beta1, options.adam_beta2),
        "eps": options.adam_epsilon,
        "weight_decay": options.weight_decay,
    }
    if options.optimizer == "adamw8bit":
        try:
            import bitsandbytes  # optional: its 8-bit AdamW keeps the optimizer state in a quarter of the memory
        except ImportError:
            raise TrainingError(
                'optimizer = "adamw8bit" needs the bitsandbytes package (pip install bitsandbytes); '
                'or use optimizer = "adamw"'
            ) from None
        return bitsandbytes.optim.AdamW8bit(params, **settings)
    return torch.optim.AdamW(params, **settings)


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    # Only cast when needed: diffusers warns on every dtype cast, even a no-op one.
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    module.to(device)


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm  # installed with diffusers and transformers

    return tqdm(total=total, initial=initial, desc="VMix training", unit="step", disable=not enabled)
