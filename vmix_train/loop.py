"""The training loop: batches, gradient accumulation, mixed precision, the learning-rate schedule, clipping, EMA,
checkpoints, resume, samples, the loss curve and TensorBoard events.

Every random choice that depends on the data (the order of the steps, caption dropout, the latent drawn from the
VAE, the noise and timestep of each image) is drawn from a generator seeded by the run's seed and the image's
position in the run, not from a running random state, and the learning rate is a function of the step. A resumed
run therefore continues exactly where the killed one stopped, with nothing to restore but the weights, the
optimizer, the EMA and the step; and the stream of batches does not depend on how many processes share it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vmix_ext.adapter import VMixAdapter
from vmix_ext.weights import save_adapter
from vmix_train.config import RunConfig, TrainingOptions
from vmix_train.data import Item, TrainingData
from vmix_train.dataset import Example
from vmix_train.distributed import World, agree, barrier, mean_across
from vmix_train.ema import WeightAverage
from vmix_train.embeddings import aesthetic_embeddings
from vmix_train.errors import TrainingError
from vmix_train.events import EventLog
from vmix_train.lora import LoraSet, webui_layout_problem
from vmix_train.model import BaseModel
from vmix_train.plot import save_loss_curve
from vmix_train.sampling import sample, sheet_of_rows, to_pil
from vmix_train.schedule import lr_factor
from vmix_train.state import STATE_FILE, TrainingState, fingerprint_differences, load_state, save_state
from vmix_train.step import Batch, VMixTrainingStep
from vmix_train.streams import stream

__all__ = ["Trainer", "TrainingError", "make_optimizer", "stream"]

PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
SAVE_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DATA_ORDER = 2  # how positions map to images (2: a bucket per step); a state from another order is another run


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


class Trainer:
    """Trains one VMix adapter on ``base`` (frozen) from ``examples``; ``run()`` writes the files to the output folder.

    Output folder: ``<name>.safetensors`` (the adapter, for models/VMix), ``<name>-step<N>.safetensors`` snapshots,
    ``training-state.safetensors`` (for resuming), ``samples/step-<N>.png`` (VMix off | on), ``loss.png``, and with
    ``[output] tensorboard`` the event files in ``logs/``; with ``lora_rank`` > 0 also ``<name>-lora.safetensors``
    (a standard LoRA file, for models/Lora) and its snapshots. With ``ema_decay`` > 0 the adapter files (and the
    samples) hold the EMA of the trained weights.
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
        # learning_rate, resolution and the bucket sides 0 become the family's: 1e-5 and 1024 for SDXL, …
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
        # Planned before the models move: the cache keys hash the VAE's weights where they are (the CPU).
        self.data = TrainingData(
            self.examples,
            base,
            self.options,
            global_batch=self.global_batch,
            dataset_folder=config.dataset,
            cache_folder=config.cache_folder,
            world=self.world,
            device=self.device,
            text_dtype=self.precision or torch.float32,
            progress=self.progress,
            log=self.log,
        )
        # The frozen UNet and text encoder run in the mixed-precision dtype (half the memory); the VAE stays in
        # float32 (SD's VAE overflows in fp16).
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
        # The EMA lives in the main process only: it alone saves adapters and draws samples.
        self.ema: WeightAverage | None = None
        if self.options.ema_decay and self.world.is_main:
            self.ema = WeightAverage(self.trainable, self.options.ema_decay)
        self.losses: list[float] = []
        self.step = 0
        self.last_lr = 0.0  # the learning rate of the last optimizer step
        self.last_grad_norm = 0.0  # the total gradient norm of the last step, before clipping
        self.events: EventLog | None = None
        self._feed: Iterator[Any] | None = None  # the uncached path's decoded micro-batches, in training order
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

    @property
    def save_dtype(self) -> torch.dtype:
        return SAVE_DTYPE[self.options.save_dtype]

    def saved_weights(self) -> contextlib.AbstractContextManager[None]:
        """Inside the block the modules hold what the files get: the EMA when the run keeps one."""
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.applied(self.trainable)

    def write_adapter(self, path: Path) -> None:
        try:
            save_adapter(self.adapter, path, self.training_facts(), dtype=self.save_dtype)
        except ValueError as exc:  # the writer refuses what the extension could not use (e.g. fp16 overflow)
            raise TrainingError(f"the adapter could not be saved to {path}: {exc}") from None

    def save_lora(self, path: Path) -> None:
        if self.lora is None:
            return
        size = f"({self.options.resolution}, {self.options.resolution})"
        metadata = {
            "ss_output_name": path.stem,
            "ss_sd_model_name": self.base.name,
            "ss_resolution": size,
            "ss_clip_skip": str(self.base.clip_skip),
            "ss_steps": str(self.step),
            "vmix_adapter": self.adapter_path.name,  # the VMix adapter trained together with this LoRA
        }
        self.lora.save(path, metadata, dtype=self.save_dtype)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        o = self.options
        facts = {
            "base": self.base.hash or self.base.name,
            "dimensions": [d.__dict__ for d in self.config.dimensions],
            "images": len(self.examples),
            "global_batch": self.global_batch,  # how it is split over processes and micro-batches may change
            "resolution": o.resolution,
            "buckets": [[b.width, b.height] for b in self.data.buckets],
            "data_order": DATA_ORDER,
            "seed": o.seed,
            "lora_rank": o.lora_rank,
            "clip_skip": self.base.clip_skip,
        }
        return json.loads(json.dumps(facts))

    def training_facts(self) -> dict[str, Any]:
        o = self.options
        facts = {
            "steps": self.step,
            "base_checkpoint": self.base.name,
            "base_hash": self.base.hash,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "images": len(self.examples),
            "batch_size": self.global_batch,
            "learning_rate": o.learning_rate,
            "lr_scheduler": o.lr_scheduler,
            "resolution": o.resolution,
            "buckets": len(self.data.buckets) if o.buckets else 0,
            "clip_skip": self.base.clip_skip,
        }
        if self.ema is not None:
            facts["ema_decay"] = o.ema_decay
        return facts

    def snapshot_path(self, kind: str, step: int) -> Path:
        """``kind`` "" for the adapter's snapshots, "-lora" for the LoRA's."""
        return self.output_dir / f"{self.config.adapter_name}{kind}-step{step:06d}.safetensors"

    def save_checkpoint(self) -> None:
        """The adapter snapshot, then the training state; each written atomically, by the main process only."""
        if not self.world.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with self.saved_weights():
            self.write_adapter(self.snapshot_path("", self.step))
            if self.lora is not None:
                self.save_lora(self.snapshot_path("-lora", self.step))
        state = TrainingState(
            step=self.step,
            weights={name: p.detach() for name, p in self.trainable.items()},
            optimizer=self.optimizer.state_dict(),
            losses=list(self.losses),
            fingerprint=self.fingerprint(),
            ema=dict(self.ema.shadow) if self.ema is not None else None,
            ema_updates=self.ema.updates if self.ema is not None else 0,
        )
        save_state(state, self.output_dir / STATE_FILE)
        self.drop_old_snapshots()

    def drop_old_snapshots(self) -> None:
        """With ``keep_snapshots`` N > 0: only the last N snapshots of the adapter (and of the LoRA) stay."""
        keep = self.options.keep_snapshots
        if not keep:
            return
        for kind in ("", "-lora"):
            pattern = re.compile(re.escape(f"{self.config.adapter_name}{kind}-step") + r"(\d{6,})\.safetensors")
            steps = sorted(
                int(match.group(1))
                for path in self.output_dir.iterdir()
                if (match := pattern.fullmatch(path.name)) is not None
            )
            for step in steps[:-keep]:
                self.snapshot_path(kind, step).unlink(missing_ok=True)

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
        try:
            with torch.no_grad():
                for name, param in self.trainable.items():
                    param.copy_(state.weights[name])
            self.optimizer.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(f"'{path}' does not fit this run ({exc}); delete it to start afresh") from None
        if self.ema is not None:
            if state.ema is None:
                self.log("[VMix] the saved run kept no EMA; the EMA starts from the resumed weights")
                self.ema = WeightAverage(self.trainable, self.options.ema_decay)
            else:
                try:
                    self.ema.load(state.ema, state.ema_updates)
                except (KeyError, RuntimeError) as exc:
                    raise TrainingError(f"'{path}' has an EMA that does not fit this run ({exc})") from None
        self.step = state.step
        self.losses = list(state.losses)
        self.log(f"[VMix] resuming at step {self.step} from {path}")
        return True

    # -- data --------------------------------------------------------------------------------------------------

    def items(self, step: int, micro: int) -> list[Item]:
        """This process's micro-batch ``micro`` of optimizer step ``step``: (position in the run, example index)."""
        return self.data.items(step, micro, self.options.batch_size)

    def batch(self, step: int, micro: int) -> Batch:
        """This process's micro-batch ``micro`` of optimizer step ``step``, every random choice drawn from the seed
        and the image's position in the run."""
        o = self.options
        items = self.items(step, micro)
        pixels = None
        if self._feed is not None:  # the uncached path: decoded ahead by the DataLoader's workers
            tag, indices, pixels = next(self._feed)
            if tag != (step, micro) or indices != [index for _, index in items]:
                raise RuntimeError(f"the image feed is out of step: {tag} arrived for {(step, micro)}")
        captions = []
        for position, index in items:
            drop = torch.rand((), generator=stream(o.seed, "dropout", position)) < o.caption_dropout
            captions.append("" if drop else self.examples[index].caption)
        with torch.no_grad():
            latents = self.data.latents(items, pixels)
        noise, timesteps = [], []
        steps = self.base.scheduler.config.num_train_timesteps
        for position, _ in items:
            generator = stream(o.seed, "noise", position)
            noise.append(torch.randn(latents.shape[1:], generator=generator))
            timesteps.append(torch.randint(0, steps, (), generator=generator))
        dtype = self.precision or torch.float32
        text = self.data.texts(captions)
        indices = [index for _, index in items]
        added = None
        if text.pooled is not None:  # SDXL: the pooled text and each image's size and crop in its bucket
            added = {"text_embeds": text.pooled, "time_ids": self.data.time_ids(indices).to(self.device)}
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

    def learning_rate(self, step: int) -> float:
        """The rate of update number ``step`` (from 0): warm-up, then the schedule (``schedule.lr_factor``)."""
        o = self.options
        return o.learning_rate * lr_factor(step, o.steps, o.lr_warmup_steps, o.lr_scheduler)

    def apply_gradients(self, loss: float) -> None:
        """The optimizer step for the accumulated gradients (clipped to ``max_grad_norm``, at the scheduled rate),
        which are then cleared; the EMA takes the new weights in; ``loss`` goes in the history."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        params = list(self.trainable.values())
        limit = self.options.max_grad_norm or float("inf")
        # g ← g·min(1, limit / (‖g‖ + 1e-6)); with no limit the factor is exactly 1. Under DDP every process holds
        # the same averaged gradients, so every process clips alike.
        self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        self.last_lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.trainable)
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
        self.describe_data()
        self.open_data()
        if self.config.tensorboard and self.world.is_main:
            self.events = EventLog(self.output_dir / "logs", purge_step=self.step)
        bar = _progress_bar(o.steps, self.step, self.progress)
        try:
            while self.step < o.steps:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{sum(self.losses[-20:]) / len(self.losses[-20:]):.4f}")
                if self.events is not None:
                    values = {"loss": loss, "learning_rate": self.last_lr, "grad_norm": self.last_grad_norm}
                    self.events.scalars(self.step, values)
                if self.step % o.save_every == 0 or self.step == o.steps:
                    self.save_checkpoint()
                    if self.events is not None:
                        self.events.flush()
                if self.world.is_main and self.step % o.sample_every == 0 and self.sample_prompts():
                    self.save_samples()
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            bar.close()
            self.close_data()
            self.step_fn.close()
            if self.events is not None:
                self.events.close()
                self.events = None
            if self.lora is not None:
                self.lora.detach()
        if self.world.is_main:
            with self.saved_weights():
                self.write_adapter(self.adapter_path)
                if self.lora is not None:
                    self.save_lora(self.lora_path)
            save_loss_curve(self.losses, self.output_dir / "loss.png")
            self.log(f"[VMix] adapter written to {self.adapter_path}; copy it into the WebUI's models/VMix folder")
            if self.lora is not None:
                self.log(f"[VMix] LoRA written to {self.lora_path}; copy it into models/Lora, use it with the adapter")
        barrier(self.world)
        return self.adapter_path

    def open_data(self) -> None:
        """Fill the cache with what it lacks; without a cache, start the workers decoding from the current step."""
        self.data.prepare()
        if self.data.store is None:
            o = self.options
            self._feed = self.data.feed(self.step, o.steps, self.accumulation, o.batch_size)

    def close_data(self) -> None:
        self._feed = None  # the DataLoader's iterator stops its workers when it goes

    def describe_data(self) -> None:
        counts = self.data.bucket_counts()
        if len(self.data.buckets) > 1:
            shown = ", ".join(f"{b.label} ({n})" for b, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            self.log(f"[VMix] {len(counts)} of {len(self.data.buckets)} buckets in use: {shown}")
        small = [self.data.buckets[b].label for b in self.data.plan.repeated()]
        if small:
            self.log(
                f"[VMix] bucket(s) {', '.join(small[:8])} hold fewer images than the global batch "
                f"({self.global_batch}): their steps repeat images"
            )

    # -- samples -----------------------------------------------------------------------------------------------

    def sample_prompts(self) -> list[tuple[str, tuple[float, ...] | None, int, str, tuple[int, int]]]:
        """The grid's rows: (prompt, strengths, seed, negative prompt, (width, height)). The sample-prompts file's,
        or the first ``sample_count`` captions with every dimension on, seeds 0, 1, …"""
        side = self.options.resolution
        if self.config.sample_prompts is not None:
            return [
                (p.text, p.strengths, p.seed, p.negative, (p.width or side, p.height or side))
                for p in self.config.sample_prompts
            ]
        count = min(self.options.sample_count, len(self.examples))
        return [(e.caption, None, seed, "", (side, side)) for seed, e in enumerate(self.examples[:count])]

    def save_samples(self) -> Path:
        """A grid with one row per sample prompt: VMix off | VMix on (its dimensions, λ = 1); the same seed. Rows that
        share size, dimensions and negative prompt are sampled together."""
        rows = self.sample_prompts()
        settings = {"steps": self.options.sample_steps, "guidance": self.options.sample_guidance}
        self.step_fn.close()  # the training hooks must not add their last batch's values to the samples
        tiles: list[list[Any]] = [[] for _ in rows]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for number, (_, strengths, _, negative, size) in enumerate(rows):
            groups.setdefault((strengths, negative, size), []).append(number)
        with self.saved_weights(), self.autocast():
            for (strengths, negative, size), numbers in groups.items():
                prompts = [rows[n][0] for n in numbers]
                seeds = [rows[n][2] for n in numbers]
                common = {"size": size, "negative_prompt": negative, **settings}
                off = sample(self.base, prompts, seeds, **common)
                on = sample(self.base, prompts, seeds, adapter=self.adapter, strengths=strengths, **common)
                for n, image_off, image_on in zip(numbers, to_pil(off), to_pil(on), strict=True):
                    tiles[n] = [image_off, image_on]
        sheet = sheet_of_rows(tiles)
        folder = self.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step:06d}.png"
        sheet.save(path)
        if self.events is not None:
            self.events.image("samples (VMix off | on)", self.step, sheet)
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
