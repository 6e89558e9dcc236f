"""What VMix costs per UNet call: real ldm UNets (SD1.5 and SDXL widths), fp32 on the CPU, batch 2.

Run from anywhere: ``python benchmarks/bench_unet.py [--quick] [--repeats N] [--sdxl-full]``. Each figure is printed
to stdout as soon as it is measured, and the Markdown report (paste it into the README) follows at the end;
progress goes to stderr. The memory the run needs is printed before anything is built: by default it stays under
8 GB (the SDXL-like UNet gets 34 of SDXL's 70 cross-attention layers); ``--sdxl-full`` builds all 70 (about 12 GB).
Whatever the UNet's size, the adapter load time is also measured on a full SDXL-sized adapter (70 layers, d = 2048).

Variants, timed in the same run and interleaved round by round so machine noise hits all of them alike:

(a)  the UNet as ldm ships it, no VMix;
(b)  this project's VMix: ``ValueMixer(values).attach(unet)``, forward hooks on every ``attn2.to_v``;
(a') every ``attn2.forward`` replaced by a literal plain attention (q, k, v, softmax(q·kᵀ·scale), A·V, to_out);
(c)  every ``attn2.forward`` replaced by a literal two-term Eq. 9: V_a = W_Va·f_a (tiled to the context length)
     and the attention map computed once per call, then out = A·V_c + λ·A·V_a as two matmuls, then to_out.

(a') is the fair baseline for (c): both use the same attention code, so (c)/(a') is the cost of the second term.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the literal Eq. 9 layer: tests/helpers.py

import torch
from helpers import SD15_UNET_CONFIG, literal_eq9_forward, share_context
from ldm.modules.attention import BasicTransformerBlock, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from machine import cpu_model, cpu_seconds
from torch import nn

from vmix_ext.adapter import Dimension, VMixAdapter
from vmix_ext.hooks import ValueMixer
from vmix_ext.layers import cross_attention_layers
from vmix_ext.mixing import MixOptions
from vmix_ext.weights import load_adapter, save_adapter

BATCH = 2
TOKENS = 77
LAMBDA = 1.0
DIMENSIONS = (
    Dimension("color", "vivid colour", "sks1"),
    Dimension("lighting", "natural lighting", "sks2"),
    Dimension("focus", "sharp focus", "sks3"),
)
VARIANTS = ("a", "b", "a2", "c")
LABELS = {
    "a": "(a) no VMix (ldm's own attention)",
    "b": "(b) VMix: `ValueMixer` hooks on `attn2.to_v`",
    "a2": "(a') literal plain attention",
    "c": "(c) literal two-term Eq. 9",
}


# -- the two UNets ----------------------------------------------------------------------------------------------


@dataclass
class Spec:
    key: str
    title: str
    latent: int
    full_latent: int
    context_dim: int
    family: str
    build: Callable[[], UNetModel]
    notes: list[str] = field(default_factory=list)


def build_sd15() -> UNetModel:
    return UNetModel(**SD15_UNET_CONFIG)


def build_sdxl_like(depth_640: int, depth_1280: int) -> UNetModel:
    """SDXL's widths; transformer depth per level set afterwards (pip ldm takes one depth, and only depth 1 works)."""
    unet = UNetModel(
        image_size=128,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 4],
        num_head_channels=64,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=2048,
        use_linear_in_transformer=True,
        legacy=False,
    )
    for module in unet.modules():
        if isinstance(module, SpatialTransformer):
            first = module.transformer_blocks[0]
            dim = first.attn1.to_q.in_features
            heads = first.attn1.heads
            depth = depth_640 if dim == 640 else depth_1280
            for _ in range(depth - 1):
                module.transformer_blocks.append(
                    BasicTransformerBlock(dim, heads, dim // heads, context_dim=2048, checkpoint=False)
                )
    share_context(unet)
    return unet


def prepare(unet: nn.Module, seed: int) -> nn.Module:
    # ldm zero-initialises its output layers; give them weights so every layer shapes the result.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return unet.eval().requires_grad_(False)


# -- the adapter ------------------------------------------------------------------------------------------------


def random_adapter(unet: nn.Module, context_dim: int, family: str, seed: int) -> VMixAdapter:
    """``VMixAdapter.untrained`` then every weight random (Z included), so V_a is far from zero."""
    generator = torch.Generator().manual_seed(seed)
    pos = torch.randn(len(DIMENSIONS), context_dim, generator=generator)
    neg = torch.randn(len(DIMENSIONS), context_dim, generator=generator)
    adapter = VMixAdapter.untrained(unet, DIMENSIONS, pos, neg, family)
    with torch.no_grad():
        for p in adapter.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
    return adapter.requires_grad_(False)


# -- the literal attention forwards for (a') and (c) -----------------------------------------------------------


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    b, n, _ = t.shape
    return t.reshape(b, n, h, -1).permute(0, 2, 1, 3)


def literal_plain_forward(layer: nn.Module) -> Callable[..., torch.Tensor]:
    def forward(x, context=None, mask=None):
        h = layer.heads
        q, k, v = layer.to_q(x), layer.to_k(context), layer.to_v(context)
        q, k, v = (_heads(t, h) for t in (q, k, v))
        attention = (q @ k.transpose(-1, -2) * layer.scale).softmax(-1)
        out = attention @ v
        b, _, n, _ = out.shape
        return layer.to_out(out.permute(0, 2, 1, 3).reshape(b, n, -1))

    return forward


class Variants:
    """Switches one UNet between the four variants (hooks or per-instance forwards; nothing is copied)."""

    def __init__(self, unet: nn.Module, adapter: VMixAdapter, values: dict[str, torch.Tensor]) -> None:
        self.unet = unet
        self.layers = cross_attention_layers(unet)
        self.mixer = ValueMixer(values, MixOptions(scale=LAMBDA))
        with torch.no_grad():
            f_a = adapter.aesthetic_context(None, dtype=torch.float32)
        w_va = {p: proj.weight.float() for p, proj in zip(adapter.layer_paths, adapter.value_projs, strict=True)}
        self.forwards = {
            "a2": {p: literal_plain_forward(layer) for p, layer in self.layers.items()},
            "c": {p: literal_eq9_forward(layer, f_a, w_va[p], LAMBDA) for p, layer in self.layers.items()},
        }

    def set(self, variant: str) -> None:
        self.reset()
        if variant == "b":
            self.mixer.attach(self.unet)
        elif variant in self.forwards:
            for path, layer in self.layers.items():
                layer.forward = self.forwards[variant][path]

    def reset(self) -> None:
        self.mixer.detach()
        for layer in self.layers.values():
            layer.__dict__.pop("forward", None)


# -- measuring --------------------------------------------------------------------------------------------------


def timed_call(unet: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[float, torch.Tensor]:
    x, t, context = inputs
    start = time.perf_counter()
    out = unet(x, t, context=context)
    return time.perf_counter() - start, out


def hook_cost(variants: Variants, context: torch.Tensor, loops: int) -> float:
    """Seconds per UNet call that the VMix hooks add: every real ``to_v`` called with its matmul stubbed out
    (it returns a precomputed V_c), with and without the mixer attached; the difference is hook dispatch plus
    ``ValueMixer.mix`` (cache lookup and one add) for all layers."""
    to_vs = [layer.to_v for layer in variants.layers.values()]
    for to_v in to_vs:
        v_c = to_v(context)
        to_v.forward = lambda _context, v_c=v_c: v_c
    try:

        def sweep() -> float:
            start = time.perf_counter()
            for _ in range(loops):
                for to_v in to_vs:
                    to_v(context)
            return (time.perf_counter() - start) / loops

        samples = {"a": [], "b": []}
        for _ in range(7):
            for variant in ("a", "b"):
                variants.set(variant)
                sweep()
                samples[variant].append(sweep())
        variants.reset()
        return statistics.median(samples["b"]) - statistics.median(samples["a"])
    finally:
        for to_v in to_vs:
            to_v.__dict__.pop("forward", None)


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def figure(message: str) -> None:
    """A measured figure, printed the moment it is known (a long run shows its results as it goes)."""
    print(message, flush=True)


# -- memory -----------------------------------------------------------------------------------------------------

GIB = 2**30
# Latents, attention maps and the allocator's slack at these latent sizes, measured on reduced runs.
ACTIVATIONS_BYTES = 1 * GIB


def estimate_bytes(build: Callable[[], UNetModel]) -> tuple[int, int]:
    """(UNet bytes, peak bytes) of one UNet's part of the run, from a copy built on the meta device (no memory).

    Peak: the fp32 UNet, plus the adapter three times over (fp32 while made, fp16 as loaded, and the fp32 W_Va copies
    of variant (c)), plus activations."""
    with torch.device("meta"):
        unet = build()
    unet_bytes = sum(p.numel() for p in unet.parameters()) * 4
    widths = [layer.to_v.out_features * layer.to_v.in_features for layer in cross_attention_layers(unet).values()]
    context = next(iter(cross_attention_layers(unet).values())).to_v.in_features
    adapter_params = sum(widths) + context * context
    return unet_bytes, unet_bytes + adapter_params * (4 + 2 + 4) + ACTIVATIONS_BYTES


def peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- the load time of a full SDXL-sized adapter -----------------------------------------------------------------


@dataclass
class LoadResult:
    dtype: str
    layers: int
    file_mb: float
    load_ms: list[float]


def sdxl_adapter_load(dtypes: list[torch.dtype], loads: int) -> list[LoadResult]:
    """``load_adapter`` on an adapter with SDXL's 70 layers and widths (taken from a meta-device UNet), whatever
    UNet size the rest of the run uses: the median of ``loads`` loads after one that warms the page cache."""
    with torch.device("meta"):
        widths = {
            path: layer.to_v.out_features for path, layer in cross_attention_layers(build_sdxl_like(2, 10)).items()
        }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            name = str(dtype).removeprefix("torch.")
            log(f"[load] SDXL-sized adapter ({len(widths)} layers), {name}: make, save, load ...")
            path = Path(tmp) / f"sdxl-{name}.safetensors"
            save_adapter(VMixAdapter(DIMENSIONS, 2048, widths, "sdxl").to(dtype), path)
            gc.collect()
            load_adapter(path)  # warms the page cache
            times = []
            for _ in range(loads):
                start = time.perf_counter()
                adapter = load_adapter(path)
                times.append((time.perf_counter() - start) * 1000)
                del adapter
            result = LoadResult(name, len(widths), path.stat().st_size / 2**20, times)
            figure(
                f"- load_adapter, SDXL-sized adapter ({result.layers} layers, d = 2048, {name}, "
                f"{result.file_mb:.1f} MiB): median {statistics.median(times):.0f} ms of {loads} "
                f"(range {min(times):.0f}–{max(times):.0f} ms), warm page cache"
            )
            results.append(result)
            path.unlink()
    return results


@dataclass
class Result:
    spec: Spec
    layers: int
    params: float
    times: dict[str, list[float]]
    paired_b: list[float]
    file_mb: float
    memory_mb: float
    load_ms: float
    values_ms: float
    hook_us: float
    others_cores: float
    max_diff_bc: float
    max_effect: float


def run(spec: Spec, repeats: int, warmup: int, seed: int) -> Result:
    log(f"[{spec.key}] building the UNet ...")
    torch.manual_seed(seed)
    unet = prepare(spec.build(), seed)
    layers = cross_attention_layers(unet)
    params = sum(p.numel() for p in unet.parameters()) / 1e9

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        log(f"[{spec.key}] adapter: random weights, save (fp16), load ...")
        path = Path(tmp) / f"bench-{spec.key}.safetensors"
        made = random_adapter(unet, spec.context_dim, spec.family, seed + 1)
        save_adapter(made, path, dtype=torch.float16)
        del made
        file_mb = path.stat().st_size / 2**20
        load_times = []
        for _ in range(3):
            start = time.perf_counter()
            adapter = load_adapter(path)
            load_times.append(time.perf_counter() - start)
        memory_mb = sum(t.numel() * t.element_size() for t in (*adapter.parameters(), *adapter.buffers())) / 2**20
        figure(
            f"- [{spec.key}] adapter ({len(layers)} layers, fp16): file {file_mb:.1f} MiB, load_adapter median "
            f"{statistics.median(load_times) * 1000:.0f} ms of 3"
        )
        start = time.perf_counter()
        values = adapter.aesthetic_values(None, dtype=torch.float32)
        values_ms = (time.perf_counter() - start) * 1000
        figure(f"- [{spec.key}] V_a for all layers (once per generation): {values_ms:.0f} ms")

        generator = torch.Generator().manual_seed(seed + 2)
        inputs = (
            torch.randn(BATCH, 4, spec.latent, spec.latent, generator=generator),
            torch.tensor([500, 750][:BATCH]),
            torch.randn(BATCH, TOKENS, spec.context_dim, generator=generator),
        )
        variants = Variants(unet, adapter, values)

        log(f"[{spec.key}] hook cost ...")
        hook_s = hook_cost(variants, inputs[2], loops=50)
        figure(
            f"- [{spec.key}] VMix hooks per UNet call: {hook_s * 1e6:.0f} µs "
            f"({hook_s * 1e6 / len(layers):.1f} µs/layer)"
        )

        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        outputs: dict[str, torch.Tensor] = {}
        rounds = warmup + repeats
        busy_start, own_start, wall_start = *cpu_seconds(), time.perf_counter()
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                variants.set(variant)
                elapsed, out = timed_call(unet, inputs)
                if r < warmup:
                    outputs.setdefault(variant, out)  # the first (b) call also fills the mixer's cache
                else:
                    times[variant].append(elapsed)
            variants.reset()
            if r < warmup:
                log(f"[{spec.key}] round {r + 1}/{rounds} (warm-up)")
            else:
                done = ", ".join(f"{v} {times[v][-1] * 1000:.0f} ms" for v in VARIANTS)
                figure(f"- [{spec.key}] round {r + 1 - warmup}/{repeats} (ms per UNet call): {done}")

    busy_end, own_end = cpu_seconds()
    others_cores = max(0.0, (busy_end - busy_start) - (own_end - own_start)) / (time.perf_counter() - wall_start)
    paired_b = [b / a for a, b in zip(times["a"], times["b"], strict=True)]
    max_effect = (outputs["b"] - outputs["a"]).abs().max().item()
    max_diff = (outputs["b"] - outputs["c"]).abs().max().item()
    result = Result(
        spec=spec,
        layers=len(layers),
        params=params,
        times=times,
        paired_b=paired_b,
        file_mb=file_mb,
        memory_mb=memory_mb,
        load_ms=statistics.median(load_times) * 1000,
        values_ms=values_ms,
        hook_us=hook_s * 1e6,
        others_cores=others_cores,
        max_diff_bc=max_diff,
        max_effect=max_effect,
    )
    figure(
        f"- [{spec.key}] medians: "
        + ", ".join(f"{v} {median_ms(times[v]):.0f} ms" for v in VARIANTS)
        + f"; (b)/(a) {median_ms(times['b']) / median_ms(times['a']):.3f}; max |(b) − (c)| {max_diff:.1e}"
    )
    del variants, adapter, values, unet, outputs
    gc.collect()
    return result


# -- the report -------------------------------------------------------------------------------------------------


def report(results: list[Result], loads: list[LoadResult], args: argparse.Namespace, wall: float) -> str:
    lines = ["### VMix cost per UNet call (CPU, fp32, batch 2)", ""]
    threads = torch.get_num_threads()
    lines.append(
        f"torch {torch.__version__} · {threads} thread{'s' if threads != 1 else ''} · CPU: {cpu_model()} "
        f"({os.cpu_count()} logical CPUs) · median of {args.repeats} interleaved rounds after {args.warmup} "
        f"warm-up round{'s' if args.warmup != 1 else ''}{' · --quick' if args.quick else ''}"
    )
    lines += ["", "| UNet | Variant | ms / call | × (a) | × (a') |", "|---|---|---:|---:|---:|"]
    for res in results:
        med = {v: median_ms(res.times[v]) for v in VARIANTS}
        name = f"{res.spec.title}, {res.spec.latent}×{res.spec.latent} latent, {res.layers} layers"
        for variant in VARIANTS:
            vs_a2 = f"{med[variant] / med['a2']:.3f}" if variant in ("a2", "c") else ""
            lines.append(
                f"| {name} | {LABELS[variant]} | {med[variant]:.1f} | {med[variant] / med['a']:.3f} | {vs_a2} |"
            )
    lines += [
        "",
        "| UNet | Adapter file (fp16) | Adapter parameters (fp16) | `load_adapter` | V_a for all layers (once) "
        "| VMix hooks per UNet call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        share = res.hook_us / 1000 / median_ms(res.times["a"]) * 100
        lines.append(
            f"| {res.spec.title} | {res.file_mb:.1f} MiB | {res.memory_mb:.1f} MiB | {res.load_ms:.1f} ms "
            f"| {res.values_ms:.1f} ms | {res.hook_us:.0f} µs ({res.hook_us / res.layers:.1f} µs/layer, "
            f"{share:.3f} % of (a)) |"
        )
    if loads:
        lines += [
            "",
            "| Adapter | File | `load_adapter` (median) | range |",
            "|---|---:|---:|---:|",
        ]
        for load in loads:
            lines.append(
                f"| SDXL-sized, {load.layers} layers, d = 2048, {load.dtype} | {load.file_mb:.1f} MiB "
                f"| {statistics.median(load.load_ms):.0f} ms | {min(load.load_ms):.0f}–{max(load.load_ms):.0f} ms |"
            )
    lines += ["", "Notes:", ""]
    for res in results:
        med_a, med_b = median_ms(res.times["a"]), median_ms(res.times["b"])
        ratio = med_b / med_a
        disturbed = res.others_cores > 0.2
        share = res.hook_us / 1000 / med_a * 100
        # Whole-call ratios on a shared 2-core CPU swing by several percent either way, far more than the 1 % target,
        # so the verdict rests on the deterministic hook-cost measurement; the ratio is reported as measured.
        verdict = (
            f"meets it by the hook-cost bound, {share:.3f} % of a call"
            if share <= 1.0
            else f"misses it: the hooks alone cost {share:.2f} % of a call"
        )
        lines.append(
            f"- {res.spec.title}: target ≤ 1.01×: {verdict}. Whole-call VMix on / VMix off = {ratio:.3f}×; "
            f"per-round (b)/(a) ratios: median {statistics.median(res.paired_b):.3f}, "
            f"range {min(res.paired_b):.3f}–{max(res.paired_b):.3f} (the run-to-run noise of this machine, larger "
            "than any difference VMix makes). "
            f"(c)/(a) = {median_ms(res.times['c']) / med_a:.3f}×, "
            f"(c)/(a') = {median_ms(res.times['c']) / median_ms(res.times['a2']):.3f}×. Other processes kept "
            f"{res.others_cores:.2f} of the {os.cpu_count()} CPUs busy during these rounds"
            f"{' (the timings are disturbed: rerun on an idle machine)' if disturbed else ''}."
        )
        lines.append(
            f"- {res.spec.title}: max |(b) − (c)| = {res.max_diff_bc:.2e} against a VMix effect max |(b) − (a)| "
            f"= {res.max_effect:.2e}, so (b) and (c) compute the same Eq. 9 output. "
            f"{res.params:.2f} B UNet parameters."
        )
        lines += [f"- {note}" for note in res.spec.notes]
    lines += [
        "- (b) is timed after a warm-up call, so V_a·λ is already tiled and cached per layer, as after the first step "
        "of a generation. (c) recomputes W_Va·f_a in every layer on every call, as a straightforward implementation "
        "of the paper would; (a') and (c) share the same attention code, so (c)/(a') isolates the second term.",
        "- VMix hooks per UNet call: every real `to_v` called with its matmul stubbed out (it returns a precomputed "
        "V_c), with and without the mixer attached, summed over all layers: the hook dispatch plus `ValueMixer.mix` "
        "(cache lookup and the one add). This fixed cost does not grow with the latent, so it bounds VMix's "
        "overhead at any image size more tightly than the noisy full-call ratio.",
        f"- V_a (`adapter.aesthetic_values(None, dtype=torch.float32)`) is computed once per generation from the fp16 "
        f"file's adapter; `load_adapter` is the median of 3 loads from a warm page cache (the SDXL-sized adapter "
        f"table: the median of {args.loads} after a warm-up load). Whole run: {wall:.0f} s"
        + (f", peak memory {peak / GIB:.1f} GiB." if (peak := peak_rss_bytes()) else "."),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small latents and fewer layers: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default 1)")
    parser.add_argument("--sd15-latent", type=int, default=None, help="SD1.5 latent side (default 32, 16 quick)")
    parser.add_argument("--sdxl-latent", type=int, default=None, help="SDXL-like latent side (default 16)")
    parser.add_argument(
        "--sdxl-depth",
        default=None,
        help="transformer depth at the 640- and 1280-wide levels (default 2,4: 34 layers, under 8 GB; --quick 1,1)",
    )
    parser.add_argument(
        "--sdxl-full", action="store_true", help="SDXL's real depths 2,10: all 70 layers (needs about 12 GB)"
    )
    parser.add_argument("--loads", type=int, default=5, help="timed loads of the SDXL-sized adapter (default 5)")
    parser.add_argument(
        "--load-dtypes",
        default=None,
        help="dtypes of the SDXL-sized adapter to time: float16,float32 (default; --quick float16), or none",
    )
    parser.add_argument("--only", choices=("sd15", "sdxl"), default=None, help="run one UNet only")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice); 1 resists load"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1 (the warm-up fills VMix's cache)")
    sd15_latent = args.sd15_latent or (16 if args.quick else 32)
    sdxl_latent = args.sdxl_latent or 16
    if args.sdxl_full and args.sdxl_depth:
        parser.error("--sdxl-full and --sdxl-depth both set the depth; give one")
    depth = "2,10" if args.sdxl_full else args.sdxl_depth or ("1,1" if args.quick else "2,4")
    depth_640, depth_1280 = (int(d) for d in depth.split(","))
    load_dtypes = args.load_dtypes or ("float16" if args.quick else "float16,float32")
    load_dtypes = [] if load_dtypes == "none" else [getattr(torch, name) for name in load_dtypes.split(",")]
    sdxl_layers = 5 * depth_640 + 6 * depth_1280

    sd15 = Spec(
        key="sd15",
        title="SD1.5",
        latent=sd15_latent,
        full_latent=64,
        context_dim=768,
        family="sd1",
        build=build_sd15,
        notes=[
            "SD1.5: the real SD1.5 UNet architecture (ldm `UNetModel`, model_channels 320, channel_mult [1,2,4,4], "
            "8 heads, attention at 64/32/16 of a 64×64 latent, context 768 × 77 tokens, 16 cross-attention layers), "
            "random weights."
        ],
    )
    sdxl = Spec(
        key="sdxl",
        title="SDXL-like",
        latent=sdxl_latent,
        full_latent=128,
        context_dim=2048,
        family="sdxl",
        build=lambda: build_sdxl_like(depth_640, depth_1280),
        notes=[
            "SDXL-like: SDXL's widths (model_channels 320, channel_mult [1,2,4], 64-channel heads, linear proj_in/out, "
            "no attention at the highest resolution, context 2048 × 77 tokens), random weights. The pip ldm "
            "`UNetModel` takes a single `transformer_depth` and breaks for depth > 1 (its SpatialTransformer indexes "
            "`context_dim[d]` and `context[i]`), so it is built with depth 1 and each SpatialTransformer is then given "
            f"{depth_640} block(s) at the 640-wide level and {depth_1280} at the 1280-wide level and middle (SDXL: "
            f"[0, 2, 10], 70 layers; `--sdxl-full`), all fed the same context as in sgm: **{sdxl_layers} "
            "cross-attention layers**. "
            "No pooled-text/size embedding (`label_emb`), which costs one small MLP per call.",
        ],
    )
    specs = [s for s in (sd15, sdxl) if args.only in (None, s.key)]
    for spec in specs:
        if spec.latent != spec.full_latent:
            spec.notes.append(
                f"{spec.title}: latent reduced from {spec.full_latent}×{spec.full_latent} to "
                f"{spec.latent}×{spec.latent} to keep the run within minutes on this CPU; attention layers see "
                f"{(spec.full_latent // spec.latent) ** 2}× fewer query tokens than at full size, so every fixed "
                "per-layer VMix cost weighs more here than it would at full size."
            )

    estimates = {spec.key: estimate_bytes(spec.build) for spec in specs}
    load_peak = 3.5 * 666 * 2**20 if torch.float32 in load_dtypes else 3.5 * 333 * 2**20 if load_dtypes else 0
    peak = max([load_peak, *(e[1] for e in estimates.values())])
    figure(
        f"Memory: about {peak / GIB:.1f} GiB at peak ("
        + ", ".join(f"{spec.title} UNet {estimates[spec.key][0] / GIB:.1f} GiB fp32" for spec in specs)
        + "; the parts run one after another). The full-size SDXL-like UNet (--sdxl-full) needs about "
        f"{estimate_bytes(lambda: build_sdxl_like(2, 10))[1] / GIB:.0f} GiB."
    )

    start = time.perf_counter()
    loads = sdxl_adapter_load(load_dtypes, args.loads)
    results = [run(spec, args.repeats, args.warmup, args.seed) for spec in specs]
    print("", flush=True)
    print(report(results, loads, args, time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main()
