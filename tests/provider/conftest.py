"""Provider test fixtures; the helpers live in provider_helpers.py (a unique module name:
``tests/provider`` is not a package, so a package named ``provider`` would shadow the real one)."""

from provider_helpers import pg_server, provider_env  # noqa: F401 -- re-exported fixtures
