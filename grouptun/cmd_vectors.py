"""``grouptun vectors FILE``: compute every output of a test-vector file.

Reads a protocol-v1 (``"vectors"``) or capsules-v1 (``"capsules"``)
document (tests/vectors/README.md; outputs may be absent), prints the same
document with every output computed, as ``json.dumps(doc, indent=1)`` plus
a newline: the published files' exact layout, so ``diff`` against a
reference shows only real differences. ``FILE`` may be ``-`` for stdin.

Exit status: 0 on success; 2 with one line naming the field at fault
(``vectors[3].n: ...``) on malformed input; with ``--check``, 1 if an output
given in the input differs from the computed one (each listed on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys

from grouptun.errors import VectorsError
from grouptun.vectors import compute_document, mismatches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="vectors JSON file, or - for stdin")
    parser.add_argument("--check", action="store_true",
                        help="also compare outputs present in FILE; exit 1 on any difference")


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
    computed = compute_document(document)
    sys.stdout.write(json.dumps(computed, indent=1) + "\n")
    if args.check:
        differing = mismatches(document, computed)  # type: ignore[arg-type]
        for path in differing:
            print(f"grouptun vectors: {path}: differs from the computed value", file=sys.stderr)
        return 1 if differing else 0
    return 0
