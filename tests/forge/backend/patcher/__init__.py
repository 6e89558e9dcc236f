"""Stand-in for Forge's ``backend/patcher`` package."""
