"""Stand-in for reForge's ``modules_forge/forge_version.py`` (main branch; dev branches carry variants of it)."""

version = "1.0.0v2-v1.10.1RC"
