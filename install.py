"""Runs at every web UI launch. VMix needs only torch and safetensors, which A1111 and Forge already ship."""

import launch

if not launch.is_installed("safetensors"):
    launch.run_pip("install safetensors", "safetensors, for VMix")
