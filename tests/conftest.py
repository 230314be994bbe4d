"""Shared fixtures: the API server (emulator or real) and kernels, from tests/support."""

pytest_plugins = ["tests.support.api", "tests.support.controlplane"]
