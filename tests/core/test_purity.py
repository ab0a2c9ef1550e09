"""grouptun/core stays sans-IO: no module imports I/O, clocks, threads or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import grouptun.core

FORBIDDEN = {
    "socket", "os", "time", "threading", "asyncio", "random", "secrets", "requests", "pytun",
    "pyroute2", "subprocess", "select", "selectors", "signal", "multiprocessing", "concurrent",
    "uvloop", "httpx", "urllib3", "http", "sqlalchemy", "fastapi", "uvicorn", "shutil", "io",
    "tempfile", "pathlib", "datetime", "logging", "sys", "ssl", "fcntl", "mmap", "ctypes", "glob",
}
CORE = Path(grouptun.core.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("<dynamic __import__>")
    return names


def test_core_has_modules():
    assert {"wire.py", "keys.py", "seal.py", "session.py"} <= {p.name for p in CORE.glob("*.py")}


def test_core_imports_no_io():
    offenders = {}
    for path in sorted(CORE.glob("*.py")):
        bad = sorted(name for name in imported_modules(path)
                     if name.split(".")[0] in FORBIDDEN or name == "<dynamic __import__>"
                     or name.startswith("importlib"))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_checker_would_catch_an_offender(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text("import os.path\nfrom time import monotonic\nfrom . import wire\n")
    assert imported_modules(sample) == {"os.path", "time"}
