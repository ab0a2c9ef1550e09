"""Helpers of ``scripts/bench-provider`` (not part of the product): servers, a raw HTTPS client, a sampler.

    servers.py   provider state dirs, ``serve`` replicas (sampled), admin CLI, members inserted in bulk
    wire.py      keep-alive HTTP/1.1 over asyncio TLS that counts the bytes it receives
    sampler.py   a CPU-weighted stack sampler run inside a provider process (what limits a fan-out)
    fanout.py    bytes served per rekey, and N concurrent watchers (time, RSS, profile)
"""
