"""Writes the inputs of tests/vectors/compact-v1.json; `grouptun vectors` computes its outputs (run from the
repository: PYTHONPATH=. python3 tests/vectors/make_compact_v1.py | grouptun vectors - > tests/vectors/compact-v1.json)

The compact-v1 vectors (PROTOCOL.md 2.2): provider keys from fixed seeds, a full archive and its compact
envelope signed with them. ML-DSA signing is hedged, so a rerun gives other envelopes over the same documents:
the file is a fixed known-good set; its outputs (the compact document, its Ed25519 signature, the digests) are
the same on every run."""
import hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from grouptun.core.archive import Archive, ArchiveEpoch, ArchivePolicy, sign_archive
from grouptun.core.archivemember import ArchiveMember
from grouptun.core import policy

def seed(label):
    return hashlib.sha256(label.encode()).digest()

def member(name, idx, **extra):
    return ArchiveMember(name, idx, (f"10.77.0.{idx + 2}/24", f"fd77::{idx + 2}/64"), (f"192.0.2.{idx + 2}:51820",),
                         hashlib.sha256(name.encode()).digest(), hashlib.sha512(name.encode()).digest() * 19,
                         hashlib.sha256(b"instance " + name.encode()).digest(), **extra)

EPOCH = ArchiveEpoch(7, 1, 0x01020304, 3, bytes(range(16)), bytes(range(16, 32)), 3600, 2**40, 2.0, 30.0,
                     (bytes(range(32)),), 1700000000.0)
ARCHIVES = [
    Archive(bytes(range(16)), "lan", 1700000000000, EPOCH,
            (member("alice", 0, attributes=(("role", "web"),)), member("bob", 1, routes=("192.168.5.0/24",)),
             member("carol", 2, expires_at=1800000000.0)),
            "10.77.0.0/24", "fd77::/64", 1420, 1700007200.0, provider_urls=("https://p1.example:8443",),
            policy=ArchivePolicy(3, policy.parse("role=web -> * tcp/443 allow\ndefault allow"))),
    Archive(bytes(range(16, 32)), "solo", 1700000000001, None, (member("dave", 0),),
            "10.78.0.0/24", None, 1400, 1700007200.0),
]

ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed("compact-v1 ed25519"))
ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed("compact-v1 mldsa65"))
cases = [{"ed25519_seed": seed("compact-v1 ed25519").hex(), "mldsa65_seed": seed("compact-v1 mldsa65").hex(),
          "archive": sign_archive(a, ed, ml).decode(), "compact": sign_archive(a, ed, ml, compact=True).decode()}
         for a in ARCHIVES]
json.dump({"version": 1, "archives": cases}, sys.stdout, indent=1)
print()
