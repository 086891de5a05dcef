"""The outbox file: its tables, the columns added since version 1 and what opening an older file
does to it, the ``meta`` counters, and the one way a transaction is written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from inspectd.clock import Clock
from inspectd.contract.verdict import Verdict
from inspectd.outbox.wal import WAL_LIMIT_BYTES

SCHEMA_VERSION = 1
SEQ_RESERVE = 100_000  # numbers reserved ahead on disk; the most seq can jump after a crash
KINDS = tuple(v.value for v in Verdict)
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,             -- schema_version, reserved_seq, dropped_<kind>
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS verdicts (
        seq      INTEGER PRIMARY KEY,       -- per-station sequence number, never reused
        kind     TEXT NOT NULL CHECK (kind IN {KINDS!r}),
        created  REAL NOT NULL,             -- wall time (Unix seconds) of the append
        replayed INTEGER NOT NULL DEFAULT 0, -- 1: left unacknowledged by an earlier process
        created_mono REAL,                  -- monotonic time of the append: ages run on it
        boot_id  TEXT                       -- the boot created_mono belongs to
    )""",
    # drop order is "oldest of a kind first"; the age bound probes by created_mono (below)
    "CREATE INDEX IF NOT EXISTS verdicts_kind_seq ON verdicts (kind, seq)",
    "CREATE INDEX IF NOT EXISTS verdicts_created ON verdicts (created)",  # files before 1.1
    """CREATE TABLE IF NOT EXISTS messages (
        seq          INTEGER NOT NULL REFERENCES verdicts (seq) ON DELETE CASCADE,
        idx          INTEGER NOT NULL,      -- publish order within the verdict
        topic        TEXT NOT NULL,
        payload      BLOB NOT NULL,
        qos          INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        retain       INTEGER NOT NULL,
        content_type TEXT,
        expires      REAL,                  -- wall time after which sending it is useless
        expires_mono REAL,                  -- the same on the monotonic clock of boot_id
        PRIMARY KEY (seq, idx)
    ) WITHOUT ROWID""",
    # What a source (the watched folder) handed in for a verdict, committed in the verdict's own
    # transaction: after a crash, a file with a receipt was inspected, one without was not.
    # Kept only until the source has moved the file away (``forget_receipts``).
    f"""CREATE TABLE IF NOT EXISTS receipts (
        key  BLOB PRIMARY KEY,              -- the source's key (UTF-8, surrogates escaped)
        seq  INTEGER NOT NULL,              -- the verdict's seq
        kind TEXT NOT NULL CHECK (kind IN {KINDS!r})
    ) WITHOUT ROWID""",
)


# Columns added after schema version 1 shipped, in place (ALTER TABLE) on older files: no version
# bump, and an older inspectd still reads a newer file (its rows get no monotonic time and are
# treated as from an earlier boot at the next open).
ADDED_COLUMNS = (
    ("verdicts", "created_mono", "REAL"),
    ("verdicts", "boot_id", "TEXT"),
    ("messages", "expires_mono", "REAL"),
    ("verdicts", "quarantined", "TEXT"),  # why the row is set aside; NULL: it is sent
)
AFTER_COLUMNS = (
    "CREATE INDEX IF NOT EXISTS verdicts_created_mono ON verdicts (created_mono)",
    "CREATE INDEX IF NOT EXISTS verdicts_quarantined ON verdicts (seq)"
    " WHERE quarantined IS NOT NULL",
)
# A kind a damaged row may hold counts as ERROR when dropped: as bad to lose as an ERROR.
KIND_SQL = f"CASE WHEN kind IN {KINDS!r} THEN kind ELSE 'ERROR' END"
ROWS_SQL = (  # a verdict and its messages not yet acknowledged; {where}: which verdicts
    "SELECT v.seq, v.kind, v.created, v.replayed, v.created_mono, v.quarantined, m.idx, m.topic,"
    " m.payload, m.qos, m.retain, m.content_type, m.expires, m.expires_mono"
    " FROM (SELECT * FROM verdicts WHERE {where} ORDER BY seq LIMIT ?) AS v"
    " LEFT JOIN messages AS m ON m.seq = v.seq ORDER BY v.seq, m.idx"
)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception, a failed COMMIT included."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # sqlite may have rolled back already (SQLITE_FULL, IOERR)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
        raise


def meta(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def add_columns(conn: sqlite3.Connection) -> None:
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    for statement in AFTER_COLUMNS:
        conn.execute(statement)


def rebase_clocks(conn: sqlite3.Connection, clock: Clock) -> int:
    """Put rows of an earlier boot (or from before created_mono) on this boot's monotonic
    clock, as old as the wall clock says, clamped (``inspectd.clock``): never below 0, and
    for a row known to be from an earlier boot, never below the time since this boot. A
    message's expiry keeps its distance from the row's creation. Returns how many rows."""
    params = {"mono": clock.mono(), "wall": clock.wall(), "boot": clock.boot_id}
    # created_mono > now cannot be this boot's clock (a container with its own, say)
    stale = "boot_id IS NOT :boot OR created_mono IS NULL OR created_mono > :mono"
    new_created = (
        ":mono - MAX(0.0, :wall - {t}.created,"
        " CASE WHEN {t}.boot_id != :boot THEN :mono ELSE 0.0 END)"
    )
    conn.execute(
        "UPDATE messages SET expires_mono = (SELECT "
        + new_created.format(t="v")
        + " + COALESCE(messages.expires_mono - v.created_mono, messages.expires - v.created)"
        " FROM verdicts v WHERE v.seq = messages.seq)"
        " WHERE (expires IS NOT NULL OR expires_mono IS NOT NULL)"
        f" AND seq IN (SELECT seq FROM verdicts WHERE {stale})",
        params,
    )
    return conn.execute(
        f"UPDATE verdicts SET created_mono = {new_created.format(t='verdicts')},"
        f" boot_id = :boot WHERE {stale}",
        params,
    ).rowcount


def count_quarantined(conn: sqlite3.Connection) -> int:
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM verdicts WHERE quarantined IS NOT NULL"
    ).fetchone()
    return int(count)


def read_high_water(path: Path) -> int | None:
    """The seq high-water mark of an outbox file opened read-only; None if it cannot be read."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        (meta,) = conn.execute(
            "SELECT COALESCE(MAX(value), 0) FROM meta WHERE key = 'reserved_seq'"
        ).fetchone()
        (rows,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM verdicts").fetchone()
        return max(int(meta), int(rows))
    except sqlite3.Error:
        return None
    finally:
        conn.close()


class Opened(NamedTuple):
    conn: sqlite3.Connection
    depth: int  # verdicts stored
    quarantined: int
    last_seq: int  # the highest seq that may have been handed out (the reservation's start)
    max_row_seq: int  # the highest seq of a stored row
    rebased: int  # rows whose monotonic times were moved to this boot's clock
    dropped: dict[str, int]  # verdicts dropped by kind since the file was made


def open_database(
    path: Path, sync: str, clock: Clock, start_after: int, reserve: int = SEQ_RESERVE
) -> Opened:
    """Open (or create) the outbox file in WAL mode, check its schema version, bring its
    columns and clocks up to date, and reserve the next ``reserve`` seqs on disk."""
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a file system without shared memory for the WAL
            raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL could not be enabled")
        conn.execute(f"PRAGMA synchronous={sync.upper()}")  # see the package docstring
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread's work (wal.py)
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        conn.execute("PRAGMA foreign_keys=ON")  # deleting a verdict deletes its messages
        with transaction(conn):
            for statement in SCHEMA:  # not executescript(): it would COMMIT our BEGIN first
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            version = meta(conn, "schema_version")
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"outbox schema version {version}, this inspectd reads {SCHEMA_VERSION}"
                )
            # max() with the rows too: seq must not repeat even if meta were edited by hand
            (max_row_seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM verdicts").fetchone()
            last = max(meta(conn, "reserved_seq"), max_row_seq, start_after)
            set_meta(conn, "reserved_seq", last + reserve)
            add_columns(conn)
            rebased = rebase_clocks(conn, clock)
            (depth,) = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()
            quarantined = count_quarantined(conn)
        dropped = {k: meta(conn, f"dropped_{k}") for k in KINDS}
    except BaseException:
        conn.close()
        raise
    return Opened(conn, depth, quarantined, last, max_row_seq, rebased, dropped)
