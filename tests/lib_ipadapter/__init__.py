"""Stand-in for the built-in IP-Adapter's ``lib_ipadapter`` package (``extensions-builtin/sd_forge_ipadapter``), which
every Forge-family host imports as a top-level package: tests only."""
