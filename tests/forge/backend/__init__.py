"""Stand-in for Forge's ``backend`` package (lllyasviel/stable-diffusion-webui-forge, 2025): tests only."""
