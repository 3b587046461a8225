"""SQLite the one way every matmine store uses it: WAL, explicit transactions, migrations.

- :func:`connect` opens a file in autocommit mode (``isolation_level=None``: every
  transaction is explicit) with the pragma policy: ``journal_mode=WAL`` (checked),
  ``synchronous`` as asked (FULL by default: a committed write survives power loss),
  ``busy_timeout`` and ``foreign_keys=ON``. One connection may be used from several
  threads, one at a time (the owner holds a lock).
- :func:`transaction` is ``BEGIN IMMEDIATE`` (a write: shuts out every other writer of
  the file) or ``BEGIN`` (a read: one snapshot) … ``COMMIT``, rolled back on any
  exception.
- :func:`migrate` brings a database to the newest schema: migration *i* (counting from
  1) turns version *i − 1* into *i*; the version is SQLite's ``PRAGMA user_version``
  (0 in a new file). Each step runs in its own write transaction with its version bump,
  so a crash leaves the database at a whole version. A database newer than the code is
  refused with :class:`SchemaTooNew`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

Migration = str | Callable[[sqlite3.Connection], None]
"""One schema step: a SQL script (statements separated by ``;``) or a function of the
connection, run inside the step's transaction."""


class StoreError(Exception):
    """A SQLite file that cannot be used as asked (no WAL, a schema from newer code)."""


class SchemaTooNew(StoreError):
    """The database was written by newer code: its schema version is past ours."""

    def __init__(self, where: str, version: int, known: int) -> None:
        super().__init__(
            f"{where} has schema version {version}, but this program knows versions up to "
            f"{known}: it was written by a newer matmine. Run that version, or point this "
            "one at another data dir."
        )
        self.version = version
        self.known = known


def connect(
    path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
) -> sqlite3.Connection:
    """Open (or create) the SQLite file at ``path`` with the pragma policy above."""
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
    if str(path) == ":memory:":
        raise ValueError("a store needs a file path (WAL does not apply to :memory:)")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if journal.lower() != "wal":
            raise StoreError(f"could not put {path} in WAL mode (got {journal})")
        conn.execute(f"PRAGMA synchronous = {mode}")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction on ``conn``: committed when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the file (``PRAGMA user_version``)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[Migration], *, where: str = "the database"
) -> int:
    """Apply the migrations ``conn`` has not had yet; returns the version it is now at.

    ``where`` names the file in the :class:`SchemaTooNew` message.
    """
    known = len(migrations)
    version = schema_version(conn)
    while version < known:
        with transaction(conn):
            version = schema_version(conn)  # another process may have migrated meanwhile
            if version >= known:
                break
            step = migrations[version]
            if callable(step):
                step(conn)
            else:
                for statement in statements(step):
                    conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
    if version > known:
        raise SchemaTooNew(where, version, known)
    return version


def statements(script: str) -> list[str]:
    """The complete SQL statements of ``script``, in order (``executescript`` would commit
    the open transaction first, so migrations run them one by one)."""
    found, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                found.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;"):  # an open string literal or a trigger without END
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending!r:.80}")
    return found


def open_store(
    path: str | Path, migrations: Sequence[Migration], *, synchronous: str = "FULL"
) -> sqlite3.Connection:
    """A store's file at ``path`` (its folder made if missing), connected and migrated."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, synchronous=synchronous)
    try:
        migrate(conn, migrations, where=str(path))
    except BaseException:
        conn.close()
        raise
    return conn
