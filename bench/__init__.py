"""Benchmarks of wg-kube against baselines measured in the same run (`python -m bench.run`)."""
