"""A hostile home provider: run on the relay's host, with the relay's own keys and database (issue 19, "Checked by").

    python3 tests/lab/hostile_relay.py --state DIR --link owner --group lan --member c --epoch E

The relay is trusted to speak for its own members over the link, so what it
can legitimately obtain is fetched the legitimate way: the capsule and the
sealed salt of its member ``--member`` for epoch ``--epoch``, through the
real HTTPS link endpoints of the owner, signed with its own key. It then

- tries to open both with every private key in its state dir (its Ed25519
  and ML-DSA-65 signing keys, its TLS key), each turned into a KEM key the
  two ways a relay could try (the raw key as the X25519 part; hashed to the
  96 bytes of a KEM key);
- forges: a forwarded request for a member that never came through the link,
  for an owner-local member's name, with a key that is not the link's (keyid
  still the relay's id), a member-API request signed as a member by the
  relay's key, an enrollment of a member the owner never invited, a salt
  without the credential check;
- replays a forwarded request it sent (byte for byte, as captured).

It prints one JSON object: ``{"capsule", "salt"}`` (hex, for the caller to
show they are the real ones: the member opens them), ``"opened"`` (key
source -> true when a key opened something: must stay all false) and
``"attempts"`` (name -> {"status", "detail"}). Exit 0 when it ran; the
caller judges the answers.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from this tree

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

from grouptun.control.client import pinned_session  # noqa: E402
from grouptun.control.reqsign import sign_headers  # noqa: E402
from grouptun.core.capsule import KemPrivateKey, capsule_info, open_sealed, salt_info  # noqa: E402
from grouptun.errors import CapsuleError  # noqa: E402
from provider.keys import Signer, StatePaths, passphrase  # noqa: E402
from provider.linked import CREDENTIAL_HEADER, LINK_COVERED, MEMBER_HEADER  # noqa: E402

TIMEOUT = (3.0, 15.0)


class Relay:
    """The relay's own identity and its link to the owner, read from its state dir and database."""

    def __init__(self, state: Path, link: str) -> None:
        self.paths = StatePaths(state)
        self.signer = Signer.load(self.paths)
        self.ed25519 = _load(self.paths.ed25519)  # the same key, to sign what the provider code never would
        self.db = sqlite3.connect(f"file:{self.paths.db}?mode=ro", uri=True)
        self.url, self.tls = self.db.execute("SELECT url, tls_fingerprint FROM links WHERE name = ?",
                                             (link,)).fetchone()

    def owner_name(self, member: str) -> str:
        """The owner's name of the relay's ``member`` (NAME@LINK), from the relay's own records."""
        return self.db.execute("SELECT owner_name FROM remote_members WHERE name = ?", (member,)).fetchone()[0]

    def signed(self, method: str, path: str, member: str | None, body: bytes = b"", credential: str = "none",
               key: ed25519.Ed25519PrivateKey | None = None, key_id: str | None = None) -> tuple[str, dict]:
        """(url, headers) of a request signed as the relay signs link requests, or with ``key``/``key_id``."""
        url = self.url + path
        headers = {} if member is None else {MEMBER_HEADER: member, CREDENTIAL_HEADER: credential}
        if body:
            headers["content-type"] = "application/json"
        if key is None and key_id is None:
            self.signer.sign_request(method, url, headers, body, LINK_COVERED)
        else:
            sign_headers(method, url, headers, body, key_id or self.signer.public.fingerprint(),
                         key or ed25519.Ed25519PrivateKey.generate(), extra=LINK_COVERED if member else ())
        return url, headers

    def send(self, method: str, url: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
        with pinned_session(self.tls) as session:
            answer = session.request(method, url, headers=headers, data=body, timeout=TIMEOUT)
        return answer.status_code, answer.content

    def private_keys(self) -> dict[str, bytes]:
        """Every private key of the state dir, as raw bytes, by file."""
        found = {}
        for path in sorted([*self.paths.root.glob("keys/*.pem"), *self.paths.root.glob("tls/*key*.pem")]):
            key = _load(path)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                found[path.name] = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
            else:
                found[path.name] = key.private_bytes_raw()
        return found


def _load(path: Path):
    pem = path.read_bytes()
    return serialization.load_pem_private_key(pem, passphrase() if b"ENCRYPTED" in pem else None)


def kem_candidates(raw: bytes) -> dict[str, KemPrivateKey]:
    """The KEM keys a relay could make of one of its own private keys."""
    wide = hashlib.sha512(raw).digest() + hashlib.sha256(raw).digest()
    found = {"hashed": KemPrivateKey.from_random(wide)}
    if len(raw) == 32:
        found["as-x25519"] = KemPrivateKey(hashlib.sha512(raw).digest(), raw)
    return found


def try_open(relay: Relay, group_id: bytes, epoch: int, owner_name: str, capsule: bytes, salt: bytes) -> dict:
    opened = {}
    for source, raw in relay.private_keys().items():
        for how, candidate in kem_candidates(raw).items():
            hits = 0
            for info, sealed in ((capsule_info(group_id, epoch, owner_name), capsule),
                                 (salt_info(group_id, epoch, owner_name), salt)):
                try:
                    open_sealed(candidate, info, sealed)
                    hits += 1
                except CapsuleError:
                    continue  # the expected outcome: sealed to the member's key, which the relay lacks
            opened[f"{source} {how}"] = hits > 0
    return opened


def forgeries(relay: Relay, group: str, member: str, owner_local: str,
              epoch: int) -> dict[str, tuple[str, str, dict, bytes]]:
    """name -> (method, url, headers, body) of each forged request."""
    archive = f"/v1/groups/{group}/archive"
    mallory_ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    mallory_kem = KemPrivateKey.from_random(os.urandom(96)).public_bytes()
    enroll_body = json.dumps({"ed25519_public": base64.b64encode(mallory_ed).decode(),
                              "kem_public": base64.b64encode(mallory_kem).decode(), "endpoints": []}).encode()
    enroll = f"/v1/links/groups/{group}/members"
    salt = f"/v1/links/groups/{group}/epochs/{epoch}/salt"
    cases = {
        "never-came-through-the-link": ("GET", archive, dict(member="zed")),
        "owner-local-name": ("GET", archive, dict(member=owner_local)),
        "wrong-link-key": ("GET", archive, dict(member=member, key=ed25519.Ed25519PrivateKey.generate())),
        "member-signature-by-relay-key": ("GET", archive, dict(member=None, key=relay.ed25519,
                                                                key_id=relay.owner_name(member))),
        "owner-local-signature-by-relay-key": ("GET", archive, dict(member=None, key=relay.ed25519,
                                                                     key_id=owner_local)),
        "uninvited-enroll": ("POST", enroll, dict(member="mallory", body=enroll_body)),
        "salt-without-credential-check": ("POST", salt, dict(member=member, body=b"{}")),
    }
    out = {}
    for name, (method, path, how) in cases.items():
        body = how.pop("body", b"")
        url, headers = relay.signed(method, path, how.pop("member"), body, **how)
        out[name] = (method, url, headers, body)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    for flag in ("--state", "--link", "--group", "--member", "--owner-local", "--group-id"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--epoch", type=int, required=True)
    args = ap.parse_args(argv)
    relay = Relay(Path(args.state), args.link)
    attempts = {}
    sealed = {}
    for what, method, path, body, credential in (
            ("capsule", "GET", f"/v1/groups/{args.group}/epochs/{args.epoch}/capsule", b"", "none"),
            ("salt", "POST", f"/v1/links/groups/{args.group}/epochs/{args.epoch}/salt", b"{}", "checked")):
        status, sealed[what] = relay.send(method, *relay.signed(method, path, args.member, body, credential), body)
        attempts[f"fetch-{what}"] = {"status": status, "detail": "" if status == 200 else sealed[what][:200].decode()}
    opened = try_open(relay, bytes.fromhex(args.group_id), args.epoch, relay.owner_name(args.member), sealed["capsule"],
                      sealed["salt"]) if attempts["fetch-capsule"]["status"] == 200 else {}
    for name, (method, url, headers, body) in forgeries(relay, args.group, args.member, args.owner_local,
                                                          args.epoch).items():
        status, answer = relay.send(method, url, headers, body)
        attempts[name] = {"status": status, "detail": answer[:200].decode("utf-8", "replace")}
    url, headers = relay.signed("GET", f"/v1/groups/{args.group}/archive", args.member)
    for name in ("captured-original", "replayed"):
        status, answer = relay.send("GET", url, dict(headers))
        attempts[name] = {"status": status, "detail": "" if status == 200 else answer[:200].decode()}
    print(json.dumps({"capsule": sealed["capsule"].hex(), "salt": sealed["salt"].hex(), "opened": opened,
                      "attempts": attempts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
