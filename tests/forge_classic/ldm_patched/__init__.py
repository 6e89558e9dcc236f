"""Stand-in for Forge Classic's ``ldm_patched`` package (Haoming02/sd-webui-forge-classic, classic branch): tests
only."""
