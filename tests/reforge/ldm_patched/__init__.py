"""Stand-in for the ``ldm_patched`` package of reForge (Panchovix/stable-diffusion-webui-reForge): tests only."""
