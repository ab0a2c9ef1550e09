"""Sealed data, member side: seal a file for members, fetch and open what was sealed to us.

Design (issue 20; format in ``grouptun.core.sealeddata``): the member draws a
fresh data key, encrypts the file itself (AES-256-GCM in 64 KiB chunks) and
wraps the data key for each recipient with HPKE (X-Wing) to the recipient's
KEM public key taken from the signed archive (from the compact archive, only
its SHA-256: the key itself then comes from the provider and is used only if
it matches, PROTOCOL.md 2.2). The provider stores only the
blob, so it never sees the plaintext or the data key; it serves the blob to
the recipients it lists, while they are members. A member that was offline
opens it whenever it comes back: nothing depends on being online at the seal.

Streaming: the file is read one chunk at a time and sent in parts of the
provider's part size (4 MiB), each its own signed request; opening fetches
part by part and writes plaintext as each chunk authenticates. Memory is
bounded by one part plus one chunk, whatever the file size.

The transport is a :class:`SealedTransport` (``HttpSealed`` over the
provider client; tests use an in-process fake).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol

from grouptun.core import sealeddata as sd
from grouptun.core.archive import Archive
from grouptun.core.capsule import KemPrivateKey
from grouptun.core.keys import wipe
from grouptun.errors import ProviderError, SealedDataError, UsageError

log = logging.getLogger("grouptun.apps.sealed")


class SealedTransport(Protocol):
    def reserve(self, size: int, recipients: list[str], ttl: float) -> dict: ...
    def put_part(self, data_id: str, part: int, data: bytes) -> None: ...
    def commit(self, data_id: str) -> dict: ...
    def listing(self) -> list[dict]: ...
    def describe(self, data_id: str) -> dict: ...
    def get_part(self, data_id: str, part: int) -> bytes: ...
    def delete(self, data_id: str) -> None: ...


class HttpSealed:
    """:class:`SealedTransport` over a :class:`grouptun.control.client.ProviderClient` (signed requests)."""

    def __init__(self, client) -> None:
        self.client = client

    def reserve(self, size: int, recipients: list[str], ttl: float) -> dict:
        return self.client.call("POST", "/sealed", {"size": size, "recipients": recipients, "ttl": ttl}).json()

    def put_part(self, data_id: str, part: int, data: bytes) -> None:
        self.client.call("PUT", f"/sealed/{data_id}/parts/{part}", raw=data)

    def commit(self, data_id: str) -> dict:
        return self.client.call("POST", f"/sealed/{data_id}/commit", {}).json()

    def listing(self) -> list[dict]:
        return self.client.call("GET", "/sealed").json()["sealed"]

    def describe(self, data_id: str) -> dict:
        return self.client.call("GET", f"/sealed/{data_id}").json()

    def get_part(self, data_id: str, part: int) -> bytes:
        return self.client.call("GET", f"/sealed/{data_id}/parts/{part}").content

    def delete(self, data_id: str) -> None:
        self.client.call("DELETE", f"/sealed/{data_id}")


@dataclass(frozen=True)
class Recipient:
    name: str
    kem_public: bytes


def choose_recipients(archive: Archive, me: str, to: list[str] | None, everyone: bool, only_self: bool,
                      fetch_keys: Callable[[list[str]], dict[str, bytes]] | None = None) -> list[Recipient]:
    """``--to`` names, ``--all`` (every member, us included) or ``--self``; UsageError names an unknown one.

    A compact ``archive`` names each key by its SHA-256 only: ``fetch_keys(names)`` gets the keys, and each
    is used only if it matches the signed digest (constant-time compare), else ProviderError."""
    if sum((to is not None, everyone, only_self)) != 1:
        raise UsageError("give exactly one of --to NAMES, --all, --self")
    chosen = list(archive.members) if everyone else []
    for name in [] if everyone else dict.fromkeys([me] if only_self else to):
        member = archive.member(name)
        if member is None:
            raise UsageError(f"{name!r} is not a member of group {archive.name!r} (signed archive v{archive.version})")
        chosen.append(member)
    missing = [m.name for m in chosen if m.kem_public is None]
    if missing and fetch_keys is None:
        raise ProviderError("the archive names the members' KEM keys by digest only, and nothing fetches them")
    fetched = fetch_keys(missing) if missing else {}
    out = []
    for member in chosen:
        key = member.kem_public if member.kem_public is not None else fetched.get(member.name)
        if key is None or not member.kem_matches(key):
            raise ProviderError(f"the provider's KEM key for {member.name!r} is not the one signed archive "
                                f"v{archive.version} names (changed meanwhile? try again)")
        out.append(Recipient(member.name, key))
    return out


def _blob_stream(source: BinaryIO, header: bytes, key: bytearray, size: int):
    """Header, then sealed chunks; SealedDataError if the file's length is not ``size`` (it changed)."""
    yield header
    sealer, read = sd.ChunkSealer(key, header), 0
    chunk = source.read(sd.CHUNK_SIZE)
    while True:
        following = source.read(sd.CHUNK_SIZE) if len(chunk) == sd.CHUNK_SIZE else b""
        read += len(chunk)
        yield sealer.seal(chunk, final=not following)
        if not following:
            break
        chunk = following
    if read != size:
        raise SealedDataError(f"the file changed while it was sealed ({read} bytes read, {size} expected)")


def _parts(stream, part_size: int):
    buffer = bytearray()
    for piece in stream:
        buffer += piece
        while len(buffer) >= part_size:
            yield bytes(buffer[:part_size])
            del buffer[:part_size]
    if buffer:
        yield bytes(buffer)


def seal_file(api: SealedTransport, archive: Archive, source: BinaryIO, size: int, recipients: list[Recipient],
              ttl: float, rand: Callable[[int], bytes] = os.urandom) -> dict:
    """Seal ``size`` bytes of ``source`` for ``recipients``; the provider's entry of the committed blob.

    On any failure the reservation is deleted, so nothing half-written stays.
    """
    names = [r.name for r in recipients]
    hsize = sd.header_size(names)
    reserved = api.reserve(sd.blob_size(hsize, size), names, ttl)
    data_id = reserved["data_id"]
    key = bytearray(rand(sd.KEY_SIZE))
    try:
        if bytes.fromhex(reserved["group_id"]) != archive.group_id:
            raise ProviderError("the provider reserved the DATA-ID in another group than the signed archive's")
        header = sd.Header(archive.group_id, bytes.fromhex(data_id), sd.CHUNK_SIZE, tuple(
            (r.name, sd.wrap_key(r.kem_public, archive.group_id, bytes.fromhex(data_id), r.name, key))
            for r in recipients)).to_bytes()
        for index, part in enumerate(_parts(_blob_stream(source, header, key, size), reserved["part_size"])):
            api.put_part(data_id, index, part)
        return api.commit(data_id)
    except BaseException:
        _forget(api, data_id)
        raise
    finally:
        wipe(key)


def _forget(api: SealedTransport, data_id: str) -> None:
    try:
        api.delete(data_id)
    except ProviderError as exc:  # the reservation expires on its own (provider/sealed.py UPLOAD_WINDOW)
        log.warning("sealed data %s: reservation not deleted (%s); the provider drops it within 10 minutes",
                    data_id, exc)


def unseal(api: SealedTransport, group_id: bytes, me: str, kem: KemPrivateKey, data_id: str,
           sink: BinaryIO) -> str:
    """Fetch ``data_id``, open it with ``kem`` and write the plaintext to ``sink``; its SHA-256 (hex).

    Every chunk is authenticated before it is written; a blob altered,
    reordered or cut short raises SealedDataError (what was written before is
    authentic but incomplete: callers writing a file remove it).
    """
    entry = api.describe(data_id)
    first = api.get_part(data_id, 0)
    header, hlen = sd.parse_header(first)
    if header.group_id != group_id or header.data_id.hex() != data_id:
        raise SealedDataError("the provider served a blob of another group or DATA-ID than asked for")
    key = sd.unwrap_key(kem, header, me)
    digest = hashlib.sha256()
    try:
        opener = sd.StreamOpener(key, first[:hlen], header.chunk_size)

        def emit(plain: bytes) -> None:
            digest.update(plain)
            sink.write(plain)

        emit(opener.feed(first[hlen:]))
        for part in range(1, int(entry["parts"])):
            emit(opener.feed(api.get_part(data_id, part)))
        emit(opener.finish())
    finally:
        wipe(key)
    return digest.hexdigest()
