"""Stand-in for Forge's ``modules_forge/forge_version.py`` (lllyasviel/stable-diffusion-webui-forge @ dfdcbab)."""

version = "2.0.1v1.10.1"
