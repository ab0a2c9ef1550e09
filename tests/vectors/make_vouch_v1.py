"""Writes tests/vectors/vouch-v1.json (run from the repository: PYTHONPATH=. python3 tests/vectors/make_vouch_v1.py > tests/vectors/vouch-v1.json)

The vouch-v1 vectors (deterministic keys from seeds; ML-DSA signing is hedged,
so the signatures themselves differ per run: the file is a fixed known-good set to verify)."""
import hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.hazmat.primitives import serialization
from grouptun.core.archive import Archive, GroupMetadata, sign_archive
from grouptun.core.archivemember import ArchiveMember
from grouptun.core.envelope import ProviderKeys
from grouptun.core.vouch import Vouch, sign_vouch

def keys(label):
    seed = hashlib.sha256(label.encode()).digest()
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return ed, ml, ProviderKeys(ed.public_key().public_bytes(*raw), ml.public_key().public_bytes_raw())

h_ed, h_ml, home = keys("vouch-v1 home")
o_ed, o_ml, owner = keys("vouch-v1 owner")
x_ed, x_ml, other = keys("vouch-v1 other")
def member(name, idx, home_id):
    return ArchiveMember(name, idx, (f"10.77.0.{idx+2}/24",), (), hashlib.sha256(name.encode()).digest(),
                         hashlib.sha512(name.encode()).digest() * 19, None, home=home_id)
def archive(provider_id, bob_home):
    return Archive(bytes(range(16)), "lan", 1700000000000, None,
                   (member("alice", 0, None), member("bob@partner", 1, bob_home)),
                   "10.77.0.0/24", None, 1420, 1900000000.0, metadata=GroupMetadata(provider_id))
NOW = 1800000000.0  # the member's wall clock for every case (the voucher's expiry)
def vouch(k=owner, groups=("lan",), home_id=home.fingerprint(), expires_at=1900000000.0):
    return Vouch(home_id, k, "https://owner.example:8443", "cd" * 32, 1700000000.0, groups, expires_at)
good_v = sign_vouch(vouch(), h_ed, h_ml).decode()
good_a = sign_archive(archive(owner.fingerprint(), home.fingerprint()), o_ed, o_ml).decode()
cases = [
    {"name": "accepted", "voucher": good_v, "archive": good_a, "error": None},
    {"name": "accepted without expires_at (a voucher from before the field)",
     "voucher": sign_vouch(vouch(expires_at=None), h_ed, h_ml).decode(), "archive": good_a, "error": None},
    {"name": "voucher expired", "voucher": sign_vouch(vouch(expires_at=1750000000.0), h_ed, h_ml).decode(),
     "archive": good_a, "error": "link"},
    {"name": "voucher expiring at the very second", "voucher": sign_vouch(vouch(expires_at=NOW), h_ed, h_ml).decode(),
     "archive": good_a, "error": "link"},
    {"name": "voucher expires_at not after issued_at",
     "voucher": sign_vouch(vouch(expires_at=1700000000.0), h_ed, h_ml).decode(), "archive": good_a, "error": "format"},
    {"name": "voucher signed by another provider", "voucher": sign_vouch(vouch(), x_ed, x_ml).decode(),
     "archive": good_a, "error": "signature"},
    {"name": "archive signed by a provider not vouched for",
     "voucher": good_v, "archive": sign_archive(archive(owner.fingerprint(), home.fingerprint()), x_ed, x_ml).decode(),
     "error": "signature"},
    {"name": "archive signature used as a voucher", "voucher": sign_archive(archive(owner.fingerprint(), home.fingerprint()), h_ed, h_ml).decode(),
     "archive": good_a, "error": "signature"},
    {"name": "member listed without its home", "voucher": good_v,
     "archive": sign_archive(archive(owner.fingerprint(), None), o_ed, o_ml).decode(), "error": "link"},
    {"name": "group the link does not serve", "voucher": sign_vouch(vouch(groups=("ops",)), h_ed, h_ml).decode(),
     "archive": good_a, "error": "link"},
    {"name": "provider_id is not the vouched provider", "voucher": good_v,
     "archive": sign_archive(archive(other.fingerprint(), home.fingerprint()), o_ed, o_ml).decode(), "error": "link"},
]
out = {"version": 1, "home_keys": home.to_json(), "member": "bob@partner", "now": NOW, "cases": cases}
json.dump(out, sys.stdout, indent=1)
print()
