"""Stand-in for Forge Neo's ``backend/diffusion_engine`` package."""
