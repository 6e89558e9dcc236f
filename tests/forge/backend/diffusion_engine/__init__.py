"""Stand-in for Forge's ``backend/diffusion_engine`` package."""
