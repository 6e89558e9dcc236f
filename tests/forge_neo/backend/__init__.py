"""Stand-in for Forge Neo's ``backend`` package (Haoming02/sd-webui-forge-classic, neo line): tests only."""
