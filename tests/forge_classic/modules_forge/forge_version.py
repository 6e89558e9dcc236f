"""Stand-in for Forge Classic's ``modules_forge/forge_version.py``."""

version = "classic"
