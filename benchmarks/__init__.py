"""Speed and memory of buig against peers, measured in the same run on the same data.

Run ``python -m benchmarks --help``; the case protocol is in ``benchmarks/README.md``.
"""
