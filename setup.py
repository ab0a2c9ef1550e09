"""Builds the optional native run cipher (grouptun/native/_runcipher.c) against the system libcrypto.

Everything else about the package is in pyproject.toml. The extension needs gcc and OpenSSL 3's
headers (Debian: ``apt-get install gcc libssl-dev``); where either is missing the install still
succeeds without it, says so in one line, and the daemon runs on the reference (numpy) path.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HARDENING = ["-O2", "-Wall", "-Wextra", "-Werror", "-fstack-protector-strong", "-U_FORTIFY_SOURCE",
             "-D_FORTIFY_SOURCE=2"]


class OptionalBuildExt(build_ext):
    """build_ext that leaves the extension out, with one line, instead of failing the install."""

    skipped = False

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - compiler, headers or linker missing: all mean "no extension"
            self._skipped(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - as above
            self._skipped(exc)

    def copy_extensions_to_source(self):
        if not self.skipped:  # an in-place build (pip install -e .) that did not build has nothing to copy
            super().copy_extensions_to_source()

    def _skipped(self, exc):
        if self.skipped:
            return
        self.skipped = True
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(f"grouptun: native run cipher not built ({reason}); the reference path will run "
              "(needs gcc and libssl-dev)", file=sys.stderr)


setup(
    ext_modules=[Extension("grouptun.native._runcipher", ["grouptun/native/_runcipher.c"],
                           libraries=["crypto"], extra_compile_args=HARDENING)],
    cmdclass={"build_ext": OptionalBuildExt},
)
