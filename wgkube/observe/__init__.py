"""Observability adapters: peer health over time, /metrics, Node conditions and Events, status.

They read the kernel (through its port) and the API (through `wgkube.kube`) and render
what they find; every decision is a pure function in `wgkube.desired.health`.
"""
