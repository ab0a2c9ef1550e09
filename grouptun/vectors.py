"""Test-vector documents (tests/vectors/README.md): validate inputs, compute outputs.

Two document kinds, told apart by their list key:

- ``{"version": 1, "vectors": [...]}`` (protocol-v1, and the project's
  exporter-v1): one packet of one sender per vector; every output is
  computed with the core modules. Optional inputs ``exports`` (raw exporter
  requests) and ``products`` (typed products) give ``exported`` and
  ``produced`` (PROTOCOL.md 3.1).
- ``{"version": 1, "capsules": [...]}`` (capsules-v1): kem_public and both
  infos are rebuilt, the capsule and sealed salt opened, data_id computed.
- ``{"version": 1, "sealed": [...]}`` (the project's sealed-v1, PROTOCOL.md
  3.2): the wrapped data key opened, the header and the chunked blob rebuilt.
- ``{"version": 1, "archives": [...]}`` (the project's compact-v1, PROTOCOL.md
  2.2): a full archive verified, its compact document and that document's
  (deterministic) Ed25519 signature derived, the given compact envelope
  verified as exactly that document and as nothing else.

Each vector is returned with its fields in the canonical order of the
published files (inputs and outputs interleaved as there); output fields
present in the input are recomputed, never trusted; fields this format does
not know are kept, after the known ones. Every malformed input raises
:class:`~grouptun.errors.VectorsError` with a one-line message that starts
with the JSON path of the field at fault, e.g. ``vectors[3].n: ...``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core import archive as arch
from grouptun.core import envelope as env
from grouptun.core import capsule as caps
from grouptun.core import vouch
from grouptun.core import sealeddata
from grouptun.core import exporter, keys, seal, sequence, wire
from grouptun.errors import CapsuleError, EpochRejected, SealedDataError, VectorsError

_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_U32_MAX = 2**32 - 1

PROTOCOL_INPUTS = ("suite", "shared_secret", "salt", "group_id", "epoch", "nonce_start",
                   "group_size", "member_index", "n", "type", "payload")
PROTOCOL_OUTPUTS = ("data_id", "prk", "key_check", "nonce_common", "enc_key", "mac_key",
                    "stream_sequence", "iv", "header", "packet")
EXPORT_OUTPUTS = ("exported", "produced")
PROTOCOL_ORDER = PROTOCOL_INPUTS + PROTOCOL_OUTPUTS + ("exports", "exported", "products", "produced")

CAPSULE_INPUTS = ("uid", "group_id", "epoch", "kem_seed", "x25519_private", "capsule", "salt_capsule")
CAPSULE_ORDER = ("uid", "group_id", "epoch", "kem_seed", "x25519_private", "kem_public",
                 "capsule_info", "capsule", "shared_secret", "data_id", "salt_info",
                 "salt_capsule", "salt")
CAPSULE_OUTPUTS = tuple(name for name in CAPSULE_ORDER if name not in CAPSULE_INPUTS)

SEALED_INPUTS = ("uid", "group_id", "data_id", "chunk_size", "kem_seed", "x25519_private", "wrapped", "plaintext")
SEALED_ORDER = ("uid", "group_id", "data_id", "chunk_size", "kem_seed", "x25519_private", "kem_public",
                "wrap_info", "wrapped", "data_key", "plaintext", "header", "blob")
SEALED_OUTPUTS = tuple(name for name in SEALED_ORDER if name not in SEALED_INPUTS)

ARCHIVE_INPUTS = ("ed25519_seed", "mldsa65_seed", "archive", "compact")
ARCHIVE_ORDER = ("ed25519_seed", "mldsa65_seed", "provider_keys", "archive", "kem_sha256", "compact_document",
                 "compact_ed25519", "compact")
ARCHIVE_OUTPUTS = tuple(name for name in ARCHIVE_ORDER if name not in ARCHIVE_INPUTS)


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


class _Vector:
    """Typed access to one vector's fields; errors name ``where.field``."""

    def __init__(self, where: str, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise VectorsError(f"{where}: must be a JSON object, got {type(raw).__name__}")
        self.where = where
        self.raw = raw

    def fail(self, field: str, problem: str) -> VectorsError:
        return VectorsError(f"{self.where}.{field}: {problem}")

    def _get(self, field: str) -> Any:
        if field not in self.raw:
            raise self.fail(field, "missing")
        return self.raw[field]

    def int(self, field: str, low: int, high: int) -> int:
        value = self._get(field)
        if type(value) is not int:  # noqa: E721 - bool and float are refused on purpose
            raise self.fail(field, f"must be an integer, got {_short(value)}")
        if not low <= value <= high:
            raise self.fail(field, f"{value} outside {low}..{high}")
        return value

    def hex(self, field: str, size: int | None = None) -> bytes:
        value = self._get(field)
        if not isinstance(value, str):
            raise self.fail(field, f"must be a hex string, got {_short(value)}")
        if _HEX.fullmatch(value) is None:
            raise self.fail(field, "must be lowercase hex with an even number of digits")
        data = bytes.fromhex(value)
        if size is not None and len(data) != size:
            raise self.fail(field, f"must be {size} bytes, got {len(data)}")
        return data

    def text(self, field: str) -> str:
        value = self._get(field)
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {_short(value)}")
        return value


def _ordered(raw: dict, computed: dict, order: tuple[str, ...]) -> dict:
    merged = {**raw, **computed}
    result = {name: merged[name] for name in order if name in merged}
    result.update((name, value) for name, value in raw.items() if name not in result)
    return result


def _seal(cipher: seal.PacketCipher, header: bytes, sequence: int, iv: bytes, payload: bytes) -> bytes:
    """The packet as a run of one through the selected path: the native run cipher, or the reference one."""
    size = len(payload)
    out = bytearray(size + wire.OVERHEAD)
    head = int.from_bytes(header[:wire.OFFSET_SEQUENCE], "big")  # the native side writes it again, then s
    cipher.run.seal_run(payload, 0, size, out, 0, len(out), 1, size, size, head, sequence, 1)
    return bytes(out)


def compute_protocol(where: str, raw: Any, run_key=None) -> dict:
    """One protocol-v1 vector with every output computed; ``run_key``: the native RunKey type, or None."""
    v = _Vector(where, raw)
    suite = v.int("suite", 1, 2)
    shared_secret = v.hex("shared_secret", keys.SECRET_SIZE)
    salt = v.hex("salt", keys.SALT_SIZE)
    group_id = v.hex("group_id", keys.GROUP_ID_SIZE)
    epoch = v.int("epoch", 0, _U32_MAX)
    nonce_start = v.int("nonce_start", 0, sequence.NONCE_START_MAX)
    group_size = v.int("group_size", sequence.GROUP_SIZE_MIN, sequence.GROUP_SIZE_MAX)
    index = v.int("member_index", 0, group_size - 1)
    n = v.int("n", 0, sequence.N_MAX)
    type_ = v.int("type", wire.TYPE_DATA, wire.TYPE_KEEPALIVE)
    payload = v.hex("payload")  # sealed as given, also for a keepalive (vectors/README.md)

    epoch_keys = keys.EpochKeys(suite, group_id, epoch, shared_secret, salt)
    try:
        s = sequence.stream_sequence(nonce_start, group_size, index, n)
        iv = seal.IvMaker(epoch_keys.nonce_common)(s)
        header = wire.encode(wire.Header(type_, wire.wire_epoch(epoch), s))
        packet = _seal(seal.sender_cipher(epoch_keys, index, run_key), header, s, iv, payload)
        computed = {
            "data_id": keys.data_id(shared_secret).hex(),
            "prk": epoch_keys.prk.hex(),
            "key_check": epoch_keys.key_check().hex(),
            "nonce_common": epoch_keys.nonce_common.hex(),
            "enc_key": epoch_keys.enc_key(index).hex(),
            "mac_key": epoch_keys.mac_key(index).hex() if suite == keys.SUITE_AES_CTR_HMAC else "",
            "stream_sequence": s,
            "iv": iv.hex(),
            "header": header.hex(),
            "packet": packet.hex(),
        }
        computed.update(_exports(v, epoch_keys))
    finally:
        epoch_keys.wipe()
    return _ordered(raw, computed, PROTOCOL_ORDER)


def _list(v: _Vector, field: str) -> list[_Vector]:
    items = v.raw[field]
    if not isinstance(items, list):
        raise v.fail(field, f"must be a JSON array, got {type(items).__name__}")
    return [_Vector(f"{v.where}.{field}[{number}]", item) for number, item in enumerate(items)]


def _exports(v: _Vector, epoch_keys: keys.EpochKeys) -> dict:
    """``exported`` and ``produced`` for the ``exports`` and ``products`` the vector has."""
    secret = epoch_keys.exporter_secret()
    computed: dict = {}
    if "exports" in v.raw:
        computed["exported"] = []
        for item in _list(v, "exports"):
            label, context = item.text("label"), item.hex("context")
            length = item.int("length", 1, exporter.LENGTH_MAX)
            try:
                computed["exported"].append(exporter.export(secret, label, context, length).hex())
            except exporter.ArgumentError as exc:
                raise item.fail(exc.argument, str(exc)) from None
    if "products" in v.raw:
        computed["produced"] = [_product(item, secret, epoch_keys.epoch) for item in _list(v, "products")]
    return computed


def _product(item: _Vector, secret: bytearray, epoch: int) -> dict:
    type_, name, group = item.text("type"), item.text("name"), item.text("group")
    length = item.int("length", 1, exporter.LENGTH_MAX) if "length" in item.raw else None
    try:
        if "count" in item.raw:
            stream = exporter.derive_stream(secret, type_, name, item.int("count", 1, exporter.STREAM_MAX),
                                            item.hex("context"), length)
            return {"label": stream[0].label, "stream": [_product_fields(product) for product in stream]}
        product = exporter.derive_product(secret, type_, name, item.hex("context"), length, group, epoch)
    except exporter.ArgumentError as exc:
        raise item.fail(exc.argument, str(exc)) from None
    return {"label": product.label, **_product_fields(product)}


def _product_fields(product: exporter.Product) -> dict:
    out = {"secret": product.secret.hex(), "entropy_bits": round(product.entropy_bits, 3)}
    if product.identity:
        out["identity"] = product.identity
    if product.public:
        out["public"] = product.public.hex()
    if product.password:
        out["password"] = product.password
    product.wipe()
    return out


def compute_capsule(where: str, raw: Any) -> dict:
    """One capsules-v1 vector: kem_public, infos, and what the capsules open to."""
    v = _Vector(where, raw)
    uid = v.text("uid")
    try:
        uid_size = len(uid.encode("utf-8"))
    except UnicodeEncodeError:
        raise v.fail("uid", "is not valid Unicode text (lone surrogate)") from None
    if not 1 <= uid_size <= caps.UID_MAX_BYTES:
        raise v.fail("uid", f"must be 1..{caps.UID_MAX_BYTES} bytes of UTF-8, got {uid_size}")
    group_id = v.hex("group_id", caps.GROUP_ID_SIZE)
    epoch = v.int("epoch", 0, _U32_MAX)
    kem_seed = v.hex("kem_seed", caps.MLKEM_SEED_SIZE)
    x25519_private = v.hex("x25519_private", caps.X25519_PRIVATE_SIZE)
    capsule = v.hex("capsule", caps.CAPSULE_SIZE)
    salt_capsule = v.hex("salt_capsule", caps.CAPSULE_SIZE)

    private = caps.KemPrivateKey(kem_seed, x25519_private)
    capsule_info = caps.capsule_info(group_id, epoch, uid)
    salt_info = caps.salt_info(group_id, epoch, uid)
    opened = {}
    for field, info, sealed in (("capsule", capsule_info, capsule), ("salt_capsule", salt_info, salt_capsule)):
        try:
            opened[field] = caps.open_sealed(private, info, sealed)
        except CapsuleError as exc:
            raise v.fail(field, f"does not open: {exc}") from None
    computed = {
        "kem_public": private.public_bytes().hex(),
        "capsule_info": capsule_info.hex(),
        "shared_secret": opened["capsule"].hex(),
        "data_id": keys.data_id(opened["capsule"]).hex(),
        "salt_info": salt_info.hex(),
        "salt": opened["salt_capsule"].hex(),
    }
    for secret in opened.values():
        keys.wipe(secret)
    return _ordered(raw, computed, CAPSULE_ORDER)


def compute_sealed(where: str, raw: Any) -> dict:
    """One sealed-v1 vector: the wrapped key opened, then the header and blob sealed under it."""
    v = _Vector(where, raw)
    uid, group_id, data_id = v.text("uid"), v.hex("group_id", caps.GROUP_ID_SIZE), v.hex("data_id", 16)
    chunk_size = v.int("chunk_size", sealeddata.CHUNK_MIN, sealeddata.CHUNK_MAX)
    private = caps.KemPrivateKey(v.hex("kem_seed", caps.MLKEM_SEED_SIZE),
                                 v.hex("x25519_private", caps.X25519_PRIVATE_SIZE))
    wrapped, plaintext = v.hex("wrapped", caps.CAPSULE_SIZE), v.hex("plaintext")
    try:
        header = sealeddata.Header(group_id, data_id, chunk_size, ((uid, wrapped),))
        key = sealeddata.unwrap_key(private, header, uid)
    except SealedDataError as exc:
        raise v.fail("wrapped", f"does not open: {exc}") from None
    raw_header = header.to_bytes()
    sealer = sealeddata.ChunkSealer(key, raw_header)
    pieces = [plaintext[i:i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]
    chunks = [sealer.seal(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    computed = {"kem_public": private.public_bytes().hex(),
                "wrap_info": sealeddata.wrap_info(group_id, data_id, uid).hex(), "data_key": key.hex(),
                "header": raw_header.hex(), "blob": (raw_header + b"".join(chunks)).hex()}
    keys.wipe(key)
    return _ordered(raw, computed, SEALED_ORDER)


def compute_archive(where: str, raw: Any) -> dict:
    """One compact-v1 vector: the provider keys from their seeds, the full archive verified, its compact
    document and Ed25519 signature (deterministic; ML-DSA's is hedged, so the ``compact`` envelope is an input),
    and that envelope checked: it verifies as this compact document, and neither as a full archive nor as a
    voucher."""
    v = _Vector(where, raw)
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(v.hex("ed25519_seed", 32))
    ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(v.hex("mldsa65_seed", 32))
    keys_ = env.ProviderKeys(ed.public_key().public_bytes_raw(), ml.public_key().public_bytes_raw())
    full, compact = v.text("archive").encode(), v.text("compact").encode()
    try:
        document = env.open_envelope(full, keys_, arch.SIGNING_LABEL)
        arch.parse_document(document)
    except EpochRejected as exc:
        raise v.fail("archive", f"not a full archive these keys signed: {exc}") from None
    small = arch.compact_document(document)
    try:
        got = env.open_envelope(compact, keys_, arch.COMPACT_LABEL)
        arch.parse_document(got, compact=True)
    except EpochRejected as exc:
        raise v.fail("compact", f"does not verify as a compact archive: {exc}") from None
    if got != small:
        raise v.fail("compact", "is not the compact form of archive")
    for label in (arch.SIGNING_LABEL, vouch.VOUCH_LABEL):
        try:
            env.open_envelope(compact, keys_, label)
        except EpochRejected:
            continue
        raise v.fail("compact", f"verifies under the label {label.decode()!r} too")
    signed = env.canonical(small)
    computed = {"provider_keys": keys_.to_json(), "kem_sha256": [m["kem_sha256"] for m in small["members"]],
                "compact_document": signed.decode("utf-8"),
                "compact_ed25519": ed.sign(arch.COMPACT_LABEL + signed).hex()}
    return _ordered(raw, computed, ARCHIVE_ORDER)


KINDS: dict[str, Callable[[str, Any], dict]] = {"vectors": compute_protocol, "capsules": compute_capsule,
                                                "sealed": compute_sealed, "archives": compute_archive}
OUTPUTS = {"vectors": PROTOCOL_OUTPUTS, "capsules": CAPSULE_OUTPUTS, "sealed": SEALED_OUTPUTS,
           "archives": ARCHIVE_OUTPUTS}


def compute_document(document: Any, run_key=None) -> dict:
    """The whole document with every vector's outputs computed (packets through ``run_key``'s path)."""
    if not isinstance(document, dict):
        raise VectorsError(f"document: must be a JSON object, got {type(document).__name__}")
    if "version" not in document:
        raise VectorsError("version: missing")
    if type(document["version"]) is not int or document["version"] != 1:  # noqa: E721
        raise VectorsError(f"version: must be 1, got {_short(document['version'])}")
    kinds = [kind for kind in KINDS if kind in document]
    if not kinds:
        raise VectorsError("document: has neither a 'vectors', a 'capsules', a 'sealed' nor an 'archives' list")
    result = dict(document)
    for kind in kinds:
        items = document[kind]
        if not isinstance(items, list):
            raise VectorsError(f"{kind}: must be a JSON array, got {type(items).__name__}")
        compute = functools.partial(compute_protocol, run_key=run_key) if kind == "vectors" else KINDS[kind]
        result[kind] = [compute(f"{kind}[{number}]", item) for number, item in enumerate(items)]
    return result


def mismatches(given: dict, computed: dict) -> list[str]:
    """Paths of output fields present in ``given`` whose value differs from ``computed``."""
    found = []
    for kind in KINDS:
        for number, (old, new) in enumerate(zip(given.get(kind) or [], computed.get(kind) or [])):
            for field in OUTPUTS[kind] + (EXPORT_OUTPUTS if kind == "vectors" else ()):
                if isinstance(old, dict) and field in old and old[field] != new.get(field):
                    found.append(f"{kind}[{number}].{field}")
    return found
