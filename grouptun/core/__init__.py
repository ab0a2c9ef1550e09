"""The sans-IO protocol core of grouptun (PROTOCOL.md, version 1).

Nothing in this package opens a socket or a file, reads a clock, starts a
thread or draws randomness of its own: time (``now``, float seconds on a
monotonic clock) and random bytes are passed in by the shells. A test
(``tests/core/test_purity.py``) keeps it that way.
"""
