"""Stand-in for Forge Neo's ``modules_forge/forge_version.py``."""

version = "neo"
release = "2.22"
