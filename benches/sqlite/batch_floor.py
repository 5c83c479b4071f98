"""SQLite's own cost per fire, one fire per transaction against 20: the floor under
group commit on SQLite (BENCHMARKS.md, 2026-12-06).

On fsm's SQLite schema (the migrations in fsm-sqlx/migrations/sqlite), WAL and
synchronous=NORMAL as SqliteStore::open sets them, 4,096 instances: each fire reads its
instance with the key lookup, compare-and-sets it, and inserts one history row and one
outbox row. Extra pragmas come from the command line, e.g. `cache_size=-64000`.

    python3 benches/sqlite/batch_floor.py [pragma=value ...]
"""

import glob
import json
import os
import random
import sqlite3
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MIGRATIONS = os.path.join(ROOT, "fsm-sqlx", "migrations", "sqlite", "*.sql")
INSTANCES = 4096
FIRES = 20000


def open_db(path, pragmas):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA synchronous = normal")
    for pragma in pragmas:
        conn.execute("PRAGMA " + pragma)
    for migration in sorted(glob.glob(MIGRATIONS)):
        conn.executescript(open(migration).read())
    return conn


def seed(conn, context):
    conn.execute("BEGIN")
    for i in range(INSTANCES):
        conn.execute(
            "INSERT INTO fsm_machines VALUES ('Order', ?, 'Created', 0, ?, x'00', 0, 0, 0)",
            (f"o-{i}", context),
        )
    conn.execute("COMMIT")


def fire(conn, versions, context, key):
    mid = f"o-{random.randrange(INSTANCES)}"
    conn.execute(
        "SELECT m.state, m.version, m.context FROM fsm_machines m LEFT JOIN fsm_transitions t"
        " ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = ?"
        " WHERE m.machine_type = 'Order' AND m.machine_id = ?",
        (f"k-{key}", mid),
    ).fetchone()
    version = versions.get(mid, 0)
    conn.execute(
        "UPDATE fsm_machines SET state = ?, version = ?, context = ?, updated_at = ?,"
        " entered_at = COALESCE(?, entered_at)"
        " WHERE machine_type = 'Order' AND machine_id = ? AND version = ?",
        ("Created", version + 1, context, key, None, mid, version),
    )
    conn.execute(
        "INSERT INTO fsm_transitions (machine_type, machine_id, version, from_state, event,"
        " trigger_json, to_state, idem_key, fingerprint, at)"
        " VALUES ('Order', ?, ?, 'Created', 'Annotate', ?, 'Created', ?, ?, ?)",
        (mid, version + 1, '{"Annotate":"note"}', f"k-{key}", b"x" * 32, key),
    )
    conn.execute(
        "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)"
        " VALUES ('Order', ?, ?, 0, ?, ?)",
        (mid, version + 1, '{"Noted":"note"}', key),
    )
    versions[mid] = version + 1


def run(conn, versions, context, per_transaction, first_key):
    start = time.time()
    key = first_key
    while key < first_key + FIRES:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(per_transaction):
            fire(conn, versions, context, key)
            key += 1
        conn.execute("COMMIT")
    seconds = time.time() - start
    print(
        f"{per_transaction:>2} fires per transaction: {FIRES / seconds:>6.0f} fires/s,"
        f" {seconds / FIRES * 1e6:.0f} us/fire"
    )
    return key


def main():
    with tempfile.TemporaryDirectory() as scratch:
        conn = open_db(os.path.join(scratch, "floor.db"), sys.argv[1:])
        context = json.dumps({"total_cents": 0, "notes": []})
        seed(conn, context)
        versions, key = {}, 0
        for per_transaction in (1, 20, 1, 20):
            key = run(conn, versions, context, per_transaction, key)


if __name__ == "__main__":
    main()
