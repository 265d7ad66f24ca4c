"""pytest-benchmark micro-benchmarks of the codecs and sans-IO cores (``--benchmark-only``)."""
