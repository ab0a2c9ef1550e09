"""The grouptun trust provider ("vault"): the control plane.

Modules, from the wire inwards:

    cli.py       grouptun-provider: init / serve / group / invite / member / audit / backup / restore
    backup.py    backup and restore of the database (SQLite backup API, pg_dump / pg_restore)
    app.py       builds the FastAPI app (the member HTTP API is documented there); routes.py
                 its routers, schemas.py the bodies, hub.py the watch hub,
                 start batching, time-threshold ticker, metrics hook
    limits.py    rate limits (local, or shared by replicas), replay nonces, the request-size guard (ASGI)
    service.py   every operation as one transaction: groups, invitations, enrollment,
                 removal, epochs, capsules, salts, reports; audit of each
    epochs.py    epoch numbering (never reissued) and building (secrets, capsules, wipe)
    hwrng.py     the randomness: getrandom, optionally mixed with a hardware RNG
    members.py   names, address allocation, join-token hashes, Argon2id credentials
    keys.py      state dir layout, provider signing keys at rest, TLS certificate
    store.py     the database: SQLAlchemy Core over SQLite WAL or PostgreSQL (replicas), transactions
    tables.py    its schema: the tables, the schema version and the steps migrating older databases
    errors.py    the provider's exception tree (messages + exit codes + HTTP statuses)
    metrics.py   Prometheus exporter (ops engineer's; mounted by ``serve --metrics``)

Shared with members: ``grouptun.core.archive`` (signed archive, its member entries in ``grouptun.core.archivemember``,
its envelope and the provider keys in ``grouptun.core.envelope``), ``grouptun.core.jointoken``,
``grouptun.control.reqsign`` (RFC 9421 request signatures), ``grouptun.core.capsule``, ``grouptun.core.keys``.
"""
