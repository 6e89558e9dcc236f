"""VMix for diffusers: apply an adapter file to a StableDiffusion(XL) pipeline's UNet from a plain Python script.

    from vmix_diffusers import apply_vmix

    with apply_vmix(pipe, "my-adapter.safetensors", scale=0.8, dimensions="lighting, color:0.5"):
        image = pipe("a lighthouse at dusk").images[0]

Details: docs/diffusers.md.
"""

from vmix_diffusers.apply import VMix, apply_vmix

__all__ = ["VMix", "apply_vmix"]
