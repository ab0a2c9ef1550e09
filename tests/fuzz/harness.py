"""What every fuzz target shares: how it is named, run by libFuzzer (atheris) and replayed.

A target is a module ``fuzz.fuzz_<name>`` with

- ``INVARIANT``: the property it checks, in one paragraph (printed by ``scripts/fuzz --list``);
- ``test_one_input(data: bytes) -> None``: raises (any exception, usually AssertionError) only
  when the invariant is broken; libFuzzer treats that as a crash and writes the input to
  ``tests/fuzz/crashes/<name>-<sha1>``;
- ``seeds() -> dict[str, bytes]``: the seed inputs, written to ``tests/fuzz/corpus/<name>/`` by
  ``scripts/fuzz --make-corpus`` (small; committed, so CI starts from authenticated inputs).

:func:`replay` runs a target over its committed corpus and crash files (the normal test suite
does that, so the targets keep running); :func:`fuzz` runs atheris for a bounded time.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
TARGETS = ("wire", "receive", "archive", "jointoken", "provider")
MAX_LEN = {"archive": 32768, "provider": 8192}  # libFuzzer's default is 4096
DICTIONARIES = {"archive": "json.dict", "provider": "json.dict"}


def load(name: str):
    if name not in TARGETS:
        raise SystemExit(f"unknown fuzz target {name!r} (known: {', '.join(TARGETS)})")
    return importlib.import_module(f"fuzz.fuzz_{name}")


def inputs(name: str) -> list[Path]:
    """The committed corpus of ``name`` and every crash file recorded for it."""
    files = sorted((CORPUS / name).glob("*")) if (CORPUS / name).is_dir() else []
    return files + sorted(CRASHES.glob(f"{name}-*"))


def replay(name: str) -> int:
    """Run every committed input of ``name`` through its target; the number run."""
    target = load(name)
    files = inputs(name)
    for path in files:
        try:
            target.test_one_input(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"fuzz target {name}: {path.name} breaks the invariant: {exc!r}") from exc
    return len(files)


def make_corpus(name: str) -> int:
    target = load(name)
    folder = CORPUS / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    seeds = target.seeds()
    for label, data in seeds.items():
        digest = hashlib.sha1(data).hexdigest()[:12]
        (folder / f"{label}-{digest}").write_bytes(data)
    return len(seeds)


def fuzz(name: str, seconds: int, extra: list[str]) -> int:
    """Run atheris on ``name`` for ``seconds``; libFuzzer's exit status (0: no crash)."""
    import atheris  # noqa: PLC0415 -- only the fuzz runner needs it

    with atheris.instrument_imports(include=["grouptun", "provider"]):
        target = load(name)
    CRASHES.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"gt-fuzz-{name}-"))  # new inputs go here, not into git
    try:
        argv = [sys.argv[0], f"-max_total_time={seconds}", f"-max_len={MAX_LEN.get(name, 4096)}",
                "-timeout=20", "-rss_limit_mb=3072", f"-artifact_prefix={CRASHES}/{name}-",
                "-print_final_stats=1", *extra,
                *([f"-dict={HERE / DICTIONARIES[name]}"] if name in DICTIONARIES else []), str(work), str(CORPUS / name)]
        atheris.Setup(argv, target.test_one_input)
        atheris.Fuzz()  # exits the process itself: 0 when time is up, non-zero on a crash
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/fuzz")
    parser.add_argument("target", nargs="?")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--make-corpus", action="store_true")
    parser.add_argument("--replay", action="store_true")
    args, extra = parser.parse_known_args(argv)
    if args.make_corpus:
        for name in ([args.target] if args.target else TARGETS):
            print(f"{name}: {make_corpus(name)} seeds")
        return 0
    if args.replay:
        for name in ([args.target] if args.target else TARGETS):
            print(f"{name}: {replay(name)} inputs replayed")
        return 0
    if not args.target:
        parser.error("name one target")
    os.environ.setdefault("GROUPTUN_DEBUG", "0")
    return fuzz(args.target, args.seconds, extra)


if __name__ == "__main__":
    sys.exit(main())
