"""``grouptun vectors FILE``: compute every output of a test-vector file.

Reads a protocol-v1 (``"vectors"``) or capsules-v1 (``"capsules"``)
document (tests/vectors/README.md; outputs may be absent), prints the same
document with every output computed, as ``json.dumps(doc, indent=1)`` plus
a newline: the published files' exact layout, so ``diff`` against a
reference shows only real differences. ``FILE`` may be ``-`` for stdin.

Packets are sealed through the run cipher ``--cipher`` names (else the
environment variable ``GROUPTUN_CIPHER``, else ``auto``): ``native`` (the C
run cipher; an error if it is not built), ``reference`` or ``auto``
(:mod:`grouptun.native`), so both paths can be checked against a file.

Exit status: 0 on success; 2 with one line naming the field at fault
(``vectors[3].n: ...``) on malformed input; with ``--check``, 1 if an output
given in the input differs from the computed one (each listed on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from grouptun import native
from grouptun.errors import VectorsError
from grouptun.vectors import compute_document, mismatches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="vectors JSON file, or - for stdin")
    parser.add_argument("--check", action="store_true",
                        help="also compare outputs present in FILE; exit 1 on any difference")
    parser.add_argument("--cipher", choices=native.SETTINGS, default=None,
                        help=f"run cipher to seal packets with (default: ${native.ENV}, else auto)")


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise VectorsError(f"cannot read {path}: {exc.__class__.__name__}: {exc}".replace("\n", " ")) from None


def _parse(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise VectorsError(f"document: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # e.g. integers beyond Python's digit limit, deep nesting
        raise VectorsError(f"document: not usable JSON: {exc.__class__.__name__}") from None


def run(args: argparse.Namespace) -> int:
    document = _parse(_read(args.file))
    if args.cipher is not None:
        choice = native.choose(args.cipher, "--cipher")
    else:
        choice = native.choose(os.environ.get(native.ENV, "auto").strip().lower() or "auto", native.ENV)
    computed = compute_document(document, choice.maker)
    sys.stdout.write(json.dumps(computed, indent=1) + "\n")
    if args.check:
        differing = mismatches(document, computed)  # type: ignore[arg-type]
        for path in differing:
            print(f"grouptun vectors: {path}: differs from the computed value", file=sys.stderr)
        return 1 if differing else 0
    return 0
