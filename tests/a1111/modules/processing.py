"""Stand-in for modules/processing.py: processing objects, Processed, create_infotext, process_images(_inner).

Differences from the host (documented, on purpose): no text encoder (conds come from p.standin_cond /
p.standin_uncond [/ p.standin_hr_cond / p.standin_hr_uncond]), no VAE (images are the final latents, one
[C, H, W] tensor per image), img2img starts from p.standin_init_latent instead of PIL init_images."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from modules import infotext_utils, scripts, sd_models, shared
from modules.prompt_parser import DictWithShape
from modules.sd_samplers_cfg_denoiser import StandinSampler
from modules.shared import opts, state

opt_C = 4
opt_f = 8


class ImageRNG:
    """Mirrors modules/rng.py: ImageRNG — one seeded noise tensor per seed (CPU generator here)."""

    def __init__(self, shape: tuple, seeds: list[int]) -> None:
        self.shape = tuple(shape)
        self.seeds = seeds
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def next(self) -> torch.Tensor:
        """Mirrors ImageRNG.next: a batch of noise, advancing each image's generator."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])


def get_fixed_seed(seed: Any) -> int:
    """Mirrors processing.get_fixed_seed: -1/''/None become a random seed."""
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except Exception:
            seed = -1
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p: StableDiffusionProcessing) -> None:
    """Mirrors processing.fix_seed."""
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


@dataclass(repr=False)
class StableDiffusionProcessing:
    """Mirrors processing.StableDiffusionProcessing (the fields an always-on script touches)."""

    sd_model: object = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list = None  # type: ignore[assignment]
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    sampler_name: str = "Euler"
    scheduler: str = None  # type: ignore[assignment]
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    extra_generation_params: dict = None  # type: ignore[assignment]
    denoising_strength: float = None  # type: ignore[assignment]
    s_min_uncond: float = None  # type: ignore[assignment]
    override_settings: dict = None  # type: ignore[assignment]
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    outpath_samples: str = None  # type: ignore[assignment]
    outpath_grids: str = None  # type: ignore[assignment]
    # Accepted and kept, not used by the stand-in (ADetailer's inner pass passes them; host defaults).
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    restore_faces: bool = None  # type: ignore[assignment]
    tiling: bool = None  # type: ignore[assignment]

    scripts_value: Any = field(default=None, init=False)
    script_args_value: Any = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)
    sampler: Any = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: Any = field(default=None, init=False)
    uc: Any = field(default=None, init=False)
    rng: Any = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    is_api: bool = field(default=False, init=False)
    user: str = field(default=None, init=False)  # type: ignore[assignment]

    cached_c: ClassVar[list] = [None, None]
    cached_uc: ClassVar[list] = [None, None]

    def __post_init__(self) -> None:
        self.comments: dict = {}
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}
        self.all_prompts: list = []
        self.all_negative_prompts: list = []
        self.all_seeds: list = []
        self.all_subseeds: list = []
        self.prompts: list = []
        self.negative_prompts: list = []
        self.seeds: list = []
        self.subseeds: list = []
        self.standin_cond: torch.Tensor | None = getattr(self, "standin_cond", None)
        self.standin_uncond: torch.Tensor | None = getattr(self, "standin_uncond", None)
        self.cached_c = StableDiffusionProcessing.cached_c
        self.cached_uc = StableDiffusionProcessing.cached_uc

    @property
    def sd_model(self) -> Any:  # type: ignore[no-redef]  # noqa: F811
        """Mirrors the host property: always shared.sd_model; assigning p.sd_model is silently ignored."""
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value: Any) -> None:
        pass

    @property
    def scripts(self) -> Any:
        """Mirrors the host property; setting both scripts and script_args triggers setup_scripts()."""
        return self.scripts_value

    @scripts.setter
    def scripts(self, value: Any) -> None:
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self) -> Any:
        """Mirrors the host property (UI passes a tuple of all component values, API a tuple too)."""
        return self.script_args_value

    @script_args.setter
    def script_args(self, value: Any) -> None:
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self) -> None:
        """Mirrors setup_scripts: Script.setup for always-on scripts (skipping setup_for_ui_only in the API)."""
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text: str) -> None:
        """Mirrors StableDiffusionProcessing.comment."""
        self.comments[text] = 1

    def setup_prompts(self) -> None:
        """Mirrors setup_prompts: all_prompts = batch_size * n_iter copies (no styles)."""
        prompt = self.prompt
        self.all_prompts = prompt if isinstance(prompt, list) else self.batch_size * self.n_iter * [prompt]
        neg = self.negative_prompt
        self.all_negative_prompts = neg if isinstance(neg, list) else [neg] * len(self.all_prompts)
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def setup_conds(self) -> None:
        """Stands in for setup_conds: c/uc are p.standin_cond/p.standin_uncond rows for this batch."""
        n = len(self.prompts)
        rows = slice(self.iteration * self.batch_size, self.iteration * self.batch_size + n)
        self.c = _rows(self.standin_cond, rows, n)
        self.uc = _rows(self.standin_uncond, rows, n)

    def get_conds(self) -> tuple:
        """Mirrors get_conds."""
        return self.c, self.uc

    def init(self, all_prompts: list, all_seeds: list, all_subseeds: list) -> None:
        """Mirrors init (no-op in the base class)."""

    def sample(
        self,
        conditioning: Any,
        unconditional_conditioning: Any,
        seeds: list,
        subseeds: list,
        subseed_strength: float,
        prompts: list,
    ) -> torch.Tensor:
        """Mirrors sample (abstract)."""
        raise NotImplementedError()

    def close(self) -> None:
        """Mirrors close: drops sampler and conds; clears the class cond caches unless opts.persistent_cond_cache."""
        self.sampler = None
        self.c = None
        self.uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        """Mirrors get_token_merging_ratio (always 0 here)."""
        return 0.0


def _rows(t: Any, rows: slice, n: int) -> Any:
    if t is None:
        raise ValueError("the stand-in needs p.standin_cond and p.standin_uncond tensors (batch, tokens, dim)")
    if isinstance(t, dict):  # SDXL: a DictWithShape of "crossattn" and "vector", each cut the same way
        return DictWithShape({key: _rows(value, rows, n) for key, value in t.items()})
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:]).clone()
    if t.shape[0] == n:
        return t
    return t[rows]


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    """Mirrors processing.StableDiffusionProcessingTxt2Img (hires fix with latent upscale)."""

    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None  # type: ignore[assignment]
    hr_sampler_name: str = None  # type: ignore[assignment]
    hr_prompt: str = ""
    hr_negative_prompt: str = ""

    hr_checkpoint_info: Any = field(default=None, init=False)
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    hr_c: Any = field(default=None, init=False)
    hr_uc: Any = field(default=None, init=False)

    def init(self, all_prompts: list, all_seeds: list, all_subseeds: list) -> None:
        """Mirrors Txt2Img.init: with enable_hr, records Denoising strength / Hires checkpoint / Hires upscale and
        raises if hr_checkpoint_name is unknown."""
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.hr_checkpoint_name and self.hr_checkpoint_name != "Use same checkpoint":
            self.hr_checkpoint_info = sd_models.get_closet_checkpoint_match(self.hr_checkpoint_name)
            if self.hr_checkpoint_info is None:
                raise Exception(f"Could not find checkpoint with name {self.hr_checkpoint_name}")
            self.extra_generation_params["Hires checkpoint"] = self.hr_checkpoint_info.short_title
        if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
            self.extra_generation_params["Hires sampler"] = self.hr_sampler_name
        self.extra_generation_params["Hires upscale"] = self.hr_scale
        self.hr_upscale_to_x = int(self.width * self.hr_scale)
        self.hr_upscale_to_y = int(self.height * self.hr_scale)
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
        if self.hr_upscaler is not None:
            self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

    def sample(
        self,
        conditioning: Any,
        unconditional_conditioning: Any,
        seeds: list,
        subseeds: list,
        subseed_strength: float,
        prompts: list,
    ) -> torch.Tensor:
        """Mirrors Txt2Img.sample: process_before_every_sampling, first pass, then (hires) reload the hires
        checkpoint and run sample_hr_pass."""
        self.sampler = StandinSampler(self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=x.new_zeros(x.shape[0], 5, 1, 1)
        )
        del x
        if not self.enable_hr:
            return samples
        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples: torch.Tensor) -> torch.Tensor:
        """Mirrors Txt2Img.sample_hr_pass (latent upscaler): upscale, new noise, hr conds, before_hr,
        process_before_every_sampling(x=samples, noise=noise, c=hr_c, uc=hr_uc), img2img sampling."""
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = StandinSampler(self.sd_model)
        samples = torch.nn.functional.interpolate(
            samples, size=(self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f), mode="nearest"
        )
        state.nextjob()
        self.rng = ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        self.calculate_hr_conds()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(
            self,
            samples,
            noise,
            self.hr_c,
            self.hr_uc,
            steps=self.hr_second_pass_steps or self.steps,
            image_conditioning=samples.new_zeros(samples.shape[0], 5, 1, 1),
        )
        self.sampler = None
        self.is_hr_pass = False
        return samples

    def calculate_hr_conds(self) -> None:
        """Stands in for calculate_hr_conds: p.standin_hr_cond/uncond if given, else the first-pass conds."""
        if self.hr_c is not None:
            return
        hc, huc = getattr(self, "standin_hr_cond", None), getattr(self, "standin_hr_uncond", None)
        self.hr_c = self.c if hc is None else hc
        self.hr_uc = self.uc if huc is None else huc

    def setup_conds(self) -> None:
        """Mirrors Txt2Img.setup_conds: first-pass conds; hr conds reset."""
        super().setup_conds()
        self.hr_c = None
        self.hr_uc = None

    def get_conds(self) -> tuple:
        """Mirrors Txt2Img.get_conds: hr conds during the hires pass."""
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else (self.c, self.uc)

    def close(self) -> None:
        """Mirrors Txt2Img.close: also drops hr conds."""
        super().close()
        self.hr_c = None
        self.hr_uc = None


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """Mirrors processing.StableDiffusionProcessingImg2Img (init latent given directly as p.standin_init_latent)."""

    init_images: list = None  # type: ignore[assignment]
    denoising_strength: float = 0.75
    image_cfg_scale: float = None  # type: ignore[assignment]
    initial_noise_multiplier: float = None  # type: ignore[assignment]
    mask: Any = None
    # Accepted and kept, not used (host defaults; ADetailer's inner pass passes them): no masking, crop or paste.
    resize_mode: int = 0
    mask_blur: int = None  # type: ignore[assignment]
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0

    init_latent: Any = field(default=None, init=False)
    image_conditioning: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = opts.initial_noise_multiplier

    def init(self, all_prompts: list, all_seeds: list, all_subseeds: list) -> None:
        """Mirrors Img2Img.init: records Denoising strength, creates the sampler, encodes the init image."""
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.sampler = StandinSampler(self.sd_model)
        latent = getattr(self, "standin_init_latent", None)
        if latent is None:
            raise ValueError("the stand-in img2img needs p.standin_init_latent (1 or batch_size, 4, H/8, W/8)")
        self.init_latent = latent.expand(self.batch_size, *latent.shape[1:]).clone() if latent.shape[0] == 1 else latent
        self.image_conditioning = self.init_latent.new_zeros(self.init_latent.shape[0], 5, 1, 1)

    def sample(
        self,
        conditioning: Any,
        unconditional_conditioning: Any,
        seeds: list,
        subseeds: list,
        subseed_strength: float,
        prompts: list,
    ) -> torch.Tensor:
        """Mirrors Img2Img.sample: process_before_every_sampling(x=init_latent, noise=x, c, uc), then img2img."""
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        return self.sampler.sample_img2img(
            self,
            self.init_latent,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=self.image_conditioning,
        )


class Processed:
    """Mirrors processing.Processed: images, info (= infotexts[0]), infotexts, extra_generation_params (same dict
    object as p's), seeds."""

    def __init__(
        self,
        p: StableDiffusionProcessing,
        images_list: list,
        seed: int = -1,
        info: str = "",
        subseed: int | None = None,
        index_of_first_image: int = 0,
        infotexts: list | None = None,
    ) -> None:
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.job_timestamp = state.job_timestamp
        self.all_prompts = p.all_prompts or [self.prompt]
        self.all_seeds = p.all_seeds or [self.seed]
        self.all_subseeds = p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def infotext(self, p: StableDiffusionProcessing, index: int) -> str:
        """Mirrors Processed.infotext."""
        return create_infotext(
            p,
            self.all_prompts,
            self.all_seeds,
            self.all_subseeds,
            comments=[],
            position_in_batch=index % self.batch_size,
            iteration=index // self.batch_size,
        )


def create_infotext(
    p: StableDiffusionProcessing,
    all_prompts: list,
    all_seeds: list,
    all_subseeds: list,
    comments: Any = None,
    iteration: int = 0,
    position_in_batch: int = 0,
    use_main_prompt: bool = False,
    index: int | None = None,
    all_negative_prompts: list | None = None,
) -> str:
    """Mirrors processing.create_infotext: prompt, 'Negative prompt: ...', then 'k: v' pairs joined by ', '.
    extra_generation_params are merged after the built-ins; list values are indexed per image; callables get
    locals(); None values are dropped; a value equal to its key prints the key alone; values are quoted by
    infotext_utils.quote (JSON string when they contain ',', ':' or newline)."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    model = p.sd_model
    generation_params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": getattr(model, "sd_model_hash", None) if opts.add_model_hash_to_info else None,
        "Model": getattr(model, "sd_model_checkpoint", None) if opts.add_model_name_to_info else None,
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            generation_params[key] = None
    text = ", ".join(
        [k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None]
    )
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Mirrors processing.process_images: scripts.before_process, apply override_settings, reload the opts
    checkpoint (undoing a previous hires checkpoint swap), process_images_inner, restore opts in `finally`."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] if k in opts.data else opts.get_default(k) for k in p.override_settings}
    try:
        sd_models.reload_model_weights()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
            if k == "sd_model_checkpoint":
                sd_models.reload_model_weights()
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """Mirrors processing.process_images_inner: scripts.process, then per batch before_process_batch,
    process_batch, setup_conds, sample (process_before_every_sampling inside), post_sample, postprocess_batch,
    postprocess_batch_list, postprocess_image per image (infotext rendered after it), then Processed and
    scripts.postprocess. An exception anywhere propagates: postprocess is NOT called."""
    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    p.setup_prompts()
    p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts: list[str] = []
    output_images: list = []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            sd_models.reload_model_weights()
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size : (n + 1) * p.batch_size]
            latent_channels = getattr(shared.sd_model, "latent_channels", opt_C)
            p.rng = ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            samples = p.sample(
                conditioning=p.c,
                unconditional_conditioning=p.uc,
                seeds=p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
                prompts=p.prompts,
            )
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            x_samples = samples.float()
            state.nextjob()
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples = batch_params.images
            for i, x_sample in enumerate(x_samples):
                p.batch_index = i
                image = x_sample
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                infotexts.append(
                    create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i, all_negative_prompts=p.negative_prompts)
                )
                output_images.append(image)
        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))
    res = Processed(
        p,
        images_list=output_images,
        seed=p.all_seeds[0],
        info=infotexts[0],
        subseed=p.all_subseeds[0],
        infotexts=infotexts,
    )
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
