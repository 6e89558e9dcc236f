"""Stand-in for ``ldm_patched/ldm`` of Forge Classic."""
