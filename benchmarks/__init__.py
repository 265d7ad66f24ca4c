"""pxestack's benchmark suite: pxestack beside dnsmasq, Kea, tftpd-hpa and atftpd in one run.

Run ``.venv/bin/python -m benchmarks --help``; the method and the latest numbers are in
``docs/benchmarks.md``.  Micro-benchmarks of the codecs and sans-IO cores live under
``benchmarks/micro`` and run with ``pytest benchmarks/micro --benchmark-only``.
"""
