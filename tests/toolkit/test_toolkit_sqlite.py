"""toolkit.sqlite on real SQLite files: pragmas, transactions and versioned migrations."""

from __future__ import annotations

import sqlite3

import pytest

from toolkit.sqlite import (
    SchemaTooNew,
    connect,
    migrate,
    schema_version,
    statements,
    transaction,
)

MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS items_name ON items(name);
    """,
    "ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
]


def test_connect_applies_the_pragma_policy(tmp_path):
    conn = connect(tmp_path / "a.sqlite3", synchronous="normal", busy_timeout_ms=1234)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.isolation_level is None
    finally:
        conn.close()
    conn = connect(tmp_path / "b.sqlite3")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, the default
    conn.close()


def test_connect_refuses_what_it_cannot_keep(tmp_path):
    with pytest.raises(ValueError, match="synchronous must be one of"):
        connect(tmp_path / "a.sqlite3", synchronous="sometimes")
    with pytest.raises(ValueError, match="file path"):
        connect(":memory:")


def test_a_migration_is_applied_once(tmp_path):
    path = tmp_path / "db.sqlite3"
    calls = []

    def third(conn: sqlite3.Connection) -> None:
        calls.append(conn.in_transaction)
        conn.execute("INSERT INTO items (name) VALUES ('seeded')")

    conn = connect(path)
    assert schema_version(conn) == 0
    assert migrate(conn, [*MIGRATIONS, third]) == 3
    assert schema_version(conn) == 3
    assert calls == [True]  # inside the step's transaction
    columns = [row[1] for row in conn.execute("PRAGMA table_info(items)")]
    assert columns == ["id", "name", "size"]
    assert migrate(conn, [*MIGRATIONS, third]) == 3
    assert calls == [True]
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1
    conn.close()


def test_a_reopened_database_is_not_migrated_again(tmp_path):
    path = tmp_path / "db.sqlite3"
    conn = connect(path)
    migrate(conn, MIGRATIONS[:1])
    conn.execute("INSERT INTO items (name) VALUES ('kept')")
    conn.close()

    conn = connect(path)
    assert schema_version(conn) == 1
    assert migrate(conn, MIGRATIONS) == 2  # only the new step runs (ALTER twice would fail)
    conn.close()
    conn = connect(path)
    assert migrate(conn, MIGRATIONS) == 2
    assert conn.execute("SELECT name, size FROM items").fetchall() == [("kept", 0)]
    conn.close()


def test_a_database_made_before_versioning_opens_as_version_one(tmp_path):
    """A file whose tables exist but whose user_version is 0 (made before migrations):
    migration 1 (``IF NOT EXISTS``) finds everything there and only records the version."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(MIGRATIONS[0])
    old.execute("INSERT INTO items (name) VALUES ('old')")
    old.commit()
    old.close()
    conn = connect(path)
    assert migrate(conn, MIGRATIONS[:1]) == 1
    assert conn.execute("SELECT name FROM items").fetchall() == [("old",)]
    conn.close()


def test_a_failed_migration_leaves_the_previous_version(tmp_path):
    path = tmp_path / "db.sqlite3"
    conn = connect(path)
    broken = ["CREATE TABLE t (x INTEGER); INSERT INTO nowhere VALUES (1)"]
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        migrate(conn, broken)
    assert schema_version(conn) == 0
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() is None
    assert not conn.in_transaction
    conn.close()


def test_transaction_commits_and_rolls_back_on_an_exception(tmp_path):
    path = tmp_path / "db.sqlite3"
    conn = connect(path)
    migrate(conn, MIGRATIONS)
    with transaction(conn) as tx:
        tx.execute("INSERT INTO items (name) VALUES ('committed')")
    with pytest.raises(RuntimeError, match="boom"), transaction(conn) as tx:
        tx.execute("INSERT INTO items (name) VALUES ('rolled back')")
        raise RuntimeError("boom")
    assert not conn.in_transaction
    with transaction(conn, write=False) as tx:
        assert tx.execute("SELECT name FROM items").fetchall() == [("committed",)]
    conn.close()
    # What the file holds, seen by another connection.
    other = sqlite3.connect(path)
    assert other.execute("SELECT name FROM items").fetchall() == [("committed",)]
    other.close()


def test_a_write_transaction_shuts_out_other_writers(tmp_path):
    path = tmp_path / "db.sqlite3"
    first = connect(path)
    migrate(first, MIGRATIONS)
    second = connect(path, busy_timeout_ms=50)
    with transaction(first):
        with pytest.raises(sqlite3.OperationalError, match="locked"), transaction(second):
            pass
        assert not second.in_transaction
    first.close()
    second.close()


def test_a_newer_database_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "new.sqlite3"
    conn = connect(path)
    migrate(conn, MIGRATIONS)
    conn.close()
    conn = connect(path)
    with pytest.raises(SchemaTooNew) as info:
        migrate(conn, MIGRATIONS[:1], where=str(path))
    message = str(info.value)
    assert str(path) in message and "schema version 2" in message
    assert "up to 1" in message and "newer matmine" in message
    assert (info.value.version, info.value.known) == (2, 1)
    assert schema_version(conn) == 2  # nothing touched
    conn.close()


def test_statements_split_a_script_whole():
    script = """
    CREATE TABLE a (x TEXT DEFAULT 'semi;colon');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 'y'; END;
    """
    found = statements(script)
    assert len(found) == 2
    assert found[0].startswith("CREATE TABLE a") and "'semi;colon'" in found[0]
    assert found[1].startswith("CREATE TRIGGER t") and found[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        statements("CREATE TRIGGER u AFTER INSERT ON a BEGIN UPDATE a SET x = 'z';")
    assert statements("SELECT 1; SELECT 2") == ["SELECT 1;", "SELECT 2;"]


# --- the stores built on it ---------------------------------------------------------------


def test_the_node_store_opens_a_chain_made_before_versioning(tmp_path):
    from node.chain import Chain
    from node.config import NodeConfig
    from node.store import SCHEMA_V1

    path = tmp_path / "node.sqlite3"
    old = sqlite3.connect(path)  # what the code before migrations left: tables, version 0
    old.executescript(SCHEMA_V1)
    old.close()
    chain = Chain.open(tmp_path, NodeConfig())
    height, tip = chain.tip()
    chain.close()
    chain = Chain.open(tmp_path, NodeConfig())
    assert chain.tip() == (height, tip)
    assert schema_version(chain.store._db) == 1
    chain.close()


def test_the_node_refuses_a_chain_from_newer_code(tmp_path):
    from node.chain import Chain
    from node.config import NodeConfig

    Chain.open(tmp_path, NodeConfig()).close()
    conn = sqlite3.connect(tmp_path / "node.sqlite3")
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(SchemaTooNew, match="schema version 7"):
        Chain.open(tmp_path, NodeConfig())


def test_the_work_queue_opens_a_file_made_before_versioning(tmp_path):
    from pool.useful.blobstore import BlobStore
    from pool.useful.queue import WorkQueue
    from pool.useful.queue_model import MIGRATIONS, SCHEMA_V1

    path = tmp_path / "work.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_V1)
    old.execute(
        "INSERT INTO items (id, customer, m, n, k, r, state, units, operand_bytes, "
        "created) VALUES ('old', 'alice', 16, 16, 64, 4, 'done', 0, 0, 1.0)"
    )
    old.commit()
    old.close()
    queue = WorkQueue(path, BlobStore(tmp_path / "blobs"))
    try:
        assert queue.status("old").state == "done"
        assert schema_version(queue._db) == len(MIGRATIONS)  # every later migration ran
    finally:
        queue.close()
