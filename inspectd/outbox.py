"""The durable outbox for verdict messages (design.md, principle 4 "Nothing is lost").

A verdict is committed here, with its ``seq``, before it is published, and deleted only when the
broker has acknowledged it, so broker outages and daemon crashes lose nothing. The outbox is a
SQLite database in WAL mode with ``synchronous=FULL``: a committed append survives a killed
process and a power cut. It also owns the per-station ``seq`` that consumers de-duplicate on: the
number is allocated in the same transaction that stores the verdict, and its high-water mark is
kept in a ``meta`` table, so it never goes backwards or repeats, even once every row is deleted.

It is bounded by rows and by age. When it must drop, it drops the oldest OK verdicts first and NG
or ERROR only when no OK verdict is left to drop; every drop is counted by kind (persisted, in
``stats()``) and logged (``log.error`` with the seqs for NG/ERROR). Appending never fails because
the outbox is full; it fails with ``OutboxError`` only when the file cannot be written (disk full,
I/O error), and then nothing of the verdict is stored and no seq is used up.

Schema: one row per verdict in ``verdicts`` and its MQTT messages (the verdict, plus the reject
for NG and ERROR) in ``messages``, keyed by (seq, idx). Two tables rather than a JSON list in one
row: payloads are bytes (BLOBs need no base64 and no parse on read), and each message can be
acknowledged on its own PUBACK, so after a crash only the messages the broker has not
acknowledged are sent again.

Migrating from the file-based counter (``inspectd.sequence``): its file holds a high-water mark
H ("numbers up to H may have been handed out"), ``SequenceCounter(path).last`` reads it without
writing, and ``Outbox(path, start_after=H)`` makes the next seq H + 1.

One process per station: the outbox keeps its depth in memory and is not meant to be written by
two processes at once (reading it with the sqlite3 shell while the daemon runs is fine).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import structlog

from inspectd.verdict import Verdict

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
KINDS = tuple(v.value for v in Verdict)
_SEQS_LOGGED_FOR_OK = 20  # OK drops log a count and the first seqs; NG/ERROR drops log all seqs

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,             -- schema_version, last_seq, dropped_<kind>
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS verdicts (
        seq      INTEGER PRIMARY KEY,       -- per-station sequence number, never reused
        kind     TEXT NOT NULL CHECK (kind IN {KINDS!r}),
        created  REAL NOT NULL,             -- wall time (Unix seconds) of the append
        replayed INTEGER NOT NULL DEFAULT 0 -- 1: left unacknowledged by an earlier process
    )""",
    # drop order is "oldest of a kind first"; the age bound probes by created
    "CREATE INDEX IF NOT EXISTS verdicts_kind_seq ON verdicts (kind, seq)",
    "CREATE INDEX IF NOT EXISTS verdicts_created ON verdicts (created)",
    """CREATE TABLE IF NOT EXISTS messages (
        seq          INTEGER NOT NULL REFERENCES verdicts (seq) ON DELETE CASCADE,
        idx          INTEGER NOT NULL,      -- publish order within the verdict
        topic        TEXT NOT NULL,
        payload      BLOB NOT NULL,
        qos          INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        retain       INTEGER NOT NULL,
        content_type TEXT,
        PRIMARY KEY (seq, idx)
    ) WITHOUT ROWID""",
)


class OutboxError(RuntimeError):
    """The outbox file cannot be opened, read or written. The caller turns this into an ERROR
    state; nothing of the failed operation was stored."""


class MessageLike(Protocol):
    """What ``append`` stores of a message: ``Message`` here, or the publisher's
    ``OutgoingMessage`` (its ``label`` and ``on_ack`` are not stored)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def content_type(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """A message to store; the publisher's ``OutgoingMessage`` does as well."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = "application/json"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from the outbox; ``ack(seq, idx)`` deletes it."""

    seq: int
    idx: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Row:
    """One verdict waiting for its PUBACKs, with the messages not yet acknowledged, in order.

    ``replayed``: an earlier process stored it and did not see it acknowledged (see
    ``Outbox.mark_replayed``). JSON object payloads with a ``"replayed"`` key (the verdict
    payload) then read back with ``"replayed": true``; the stored bytes are not changed."""

    seq: int
    kind: Verdict
    created: float
    replayed: bool
    messages: tuple[StoredMessage, ...]


MessagesArg = Sequence[MessageLike] | Callable[[int], Iterable[MessageLike]]


def _replayed_payload(payload: bytes) -> bytes:
    # Same compact form as inspectd.mqtt.publisher.encode_json: a JSON round trip keeps key
    # order and float text, so only the flag changes. Anything else passes through unchanged.
    if not payload.startswith(b"{"):
        return payload
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict) or "replayed" not in obj or obj["replayed"] is True:
        return payload
    obj["replayed"] = True
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
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


def _checked(message: MessageLike) -> tuple[str, bytes, int, int, str | None]:
    topic, payload, qos = message.topic, message.payload, message.qos
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
        raise ValueError(f"cannot publish on topic {topic!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if qos not in (0, 1, 2):
        raise ValueError(f"invalid QoS {qos!r}")
    content_type = getattr(message, "content_type", None)
    return topic, bytes(payload), qos, int(bool(message.retain)), content_type


class Outbox:
    """Durable, bounded, thread-safe store of verdict messages that owns ``seq``.

    ``append`` commits (fsync) before it returns. ``ack`` is meant for the publisher's
    ``on_ack`` (paho's network thread); all methods may be called from any thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        start_after: int = 0,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if start_after < 0:
            raise ValueError(f"start_after must be >= 0, got {start_after}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = float(max_age_s)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._open(start_after)
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    def _open(self, start_after: int) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        conn = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        self._conn = conn  # closed by __init__ if anything below fails
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a file system without shared memory for the WAL
            raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL could not be enabled")
        conn.execute("PRAGMA synchronous=FULL")  # WAL + NORMAL may lose the last commits
        conn.execute("PRAGMA foreign_keys=ON")  # deleting a verdict deletes its messages
        with _transaction(conn):
            for statement in _SCHEMA:  # not executescript(): it would COMMIT our BEGIN first
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            version = self._meta(conn, "schema_version")
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"outbox schema version {version}, this inspectd reads {SCHEMA_VERSION}"
                )
            # max() with the rows too: seq must not repeat even if meta were edited by hand
            (max_row_seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM verdicts").fetchone()
            last = max(self._meta(conn, "last_seq"), max_row_seq, start_after)
            self._set_meta(conn, "last_seq", last)
            (self._depth,) = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()
        self._last_seq = last
        self._inherited_seq = max_row_seq  # rows up to here were left by an earlier process
        self._dropped = {k: self._meta(conn, f"dropped_{k}") for k in KINDS}
        log.info(
            "outbox.opened",
            path=str(self.path),
            depth=self._depth,
            last_seq=last,
            start_after=start_after or None,
        )
        return conn

    # -- public API -----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest seq ever allocated (or migrated in with ``start_after``)."""
        with self._lock:
            return self._last_seq

    def append(self, kind: Verdict | str, messages: MessagesArg) -> int:
        """Store one verdict and its messages under the next seq; committed to disk on return.

        ``messages`` is a list, or a callable ``seq -> messages`` for payloads that carry the
        seq (the verdict payload does): it runs inside the transaction, under the lock, so keep
        it short; if it raises, nothing is stored and the seq is not used up. Makes room first
        when the outbox is at ``max_rows`` or holds rows older than ``max_age_s`` (dropping, see
        the module docstring); never raises because it is full. Raises ``OutboxError`` when the
        database cannot be written (disk full, I/O error)."""
        kind = Verdict(kind)  # ValueError for anything but OK/NG/ERROR
        builder: Callable[[int], Iterable[MessageLike]] | None = None
        static: list[tuple[str, bytes, int, int, str | None]] | None = None
        if callable(messages):
            builder = messages
        else:  # checked before the lock is taken
            static = [_checked(m) for m in messages]
        with self._lock:
            conn = self._connection()
            seq = self._last_seq + 1
            now = time.time()
            try:
                with _transaction(conn):
                    rows = static if builder is None else [_checked(m) for m in builder(seq)]
                    if not rows:
                        raise ValueError("a verdict needs at least one message")
                    dropped = self._drop_for_age(conn, now)
                    depth = self._depth - len(dropped)
                    if depth >= self.max_rows:
                        dropped += self._drop_oldest(conn, depth - self.max_rows + 1)
                    self._count_drops(conn, dropped)
                    conn.execute(
                        "INSERT INTO verdicts (seq, kind, created) VALUES (?, ?, ?)",
                        (seq, kind.value, now),
                    )
                    conn.executemany(
                        "INSERT INTO messages (seq, idx, topic, payload, qos, retain, content_type)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(seq, idx, *row) for idx, row in enumerate(rows)],
                    )
                    self._set_meta(conn, "last_seq", seq)
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"cannot store verdict {kind.value} in outbox {self.path} "
                    f"(seq {seq} not used): {exc}"
                ) from exc
            # committed: only now does the in-memory state move on
            self._last_seq = seq
            self._depth += 1 - len(dropped)
            self._note_drops(dropped)
            return seq

    def pending(self, limit: int = 100, *, after: int = 0) -> list[Row]:
        """Up to ``limit`` verdicts with seq > ``after``, in seq order, with their messages not
        yet acknowledged. Does not drop anything (reading stays reading)."""
        with self._lock:
            conn = self._connection()
            try:
                heads = conn.execute(
                    "SELECT seq, kind, created, replayed FROM verdicts WHERE seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
                if not heads:
                    return []
                msgs = conn.execute(
                    "SELECT seq, idx, topic, payload, qos, retain, content_type FROM messages"
                    " WHERE seq BETWEEN ? AND ? ORDER BY seq, idx",
                    (heads[0][0], heads[-1][0]),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        by_seq: dict[int, list[StoredMessage]] = {}
        replayed_seqs = {seq for seq, _, _, replayed in heads if replayed}
        for seq, idx, topic, payload, qos, retain, content_type in msgs:
            if seq in replayed_seqs:
                payload = _replayed_payload(payload)
            by_seq.setdefault(seq, []).append(
                StoredMessage(seq, idx, topic, payload, qos, bool(retain), content_type)
            )
        return [
            Row(seq, Verdict(kind), created, bool(replayed), tuple(by_seq.get(seq, ())))
            for seq, kind, created, replayed in heads
        ]

    def ack(self, seq: int, idx: int | None = None) -> bool:
        """The broker acknowledged message ``idx`` of verdict ``seq`` (all of them when ``idx``
        is None): delete it, and the verdict once none of its messages is left. Acknowledging
        an unknown seq or idx is harmless (a PUBACK for a row dropped meanwhile). True if
        something was deleted."""
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    if idx is None:
                        deleted = conn.execute("DELETE FROM verdicts WHERE seq = ?", (seq,))
                        gone = deleted.rowcount
                        changed = gone > 0
                    else:
                        deleted = conn.execute(
                            "DELETE FROM messages WHERE seq = ? AND idx = ?", (seq, idx)
                        )
                        changed = deleted.rowcount > 0
                        gone = 0
                        if changed:
                            gone = conn.execute(
                                "DELETE FROM verdicts WHERE seq = ? AND NOT EXISTS"
                                " (SELECT 1 FROM messages WHERE seq = ?)",
                                (seq, seq),
                            ).rowcount
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"cannot acknowledge seq {seq} in outbox {self.path}: {exc}"
                ) from exc
            self._depth -= gone
            return changed

    def mark_replayed(self) -> int:
        """Flag the verdicts an earlier process stored and did not see acknowledged, so they are
        published again with ``"replayed": true``. Call once at startup; rows appended by this
        process are never flagged. Returns how many rows were flagged."""
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    count = conn.execute(
                        "UPDATE verdicts SET replayed = 1 WHERE seq <= ? AND replayed = 0",
                        (self._inherited_seq,),
                    ).rowcount
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot update outbox {self.path}: {exc}") from exc
        if count:
            log.warning(
                "outbox.replaying",
                path=str(self.path),
                count=count,
                detail="verdicts not acknowledged before the last stop are published again",
            )
        return count

    def prune(self) -> int:
        """Drop rows older than ``max_age_s`` now (``append`` does it too); for a periodic call
        while no parts arrive. Returns how many verdicts were dropped."""
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    dropped = self._drop_for_age(conn, time.time())
                    self._count_drops(conn, dropped)
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot prune outbox {self.path}: {exc}") from exc
            self._depth -= len(dropped)
            self._note_drops(dropped)
            return len(dropped)

    def stats(self) -> dict[str, Any]:
        """For health/stats: depth (verdicts held), oldest_age_s (None when empty), dropped by
        kind (since the file was created), last_seq."""
        with self._lock:
            conn = self._connection()
            try:
                (oldest,) = conn.execute("SELECT MIN(created) FROM verdicts").fetchone()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
            return {
                "depth": self._depth,
                "oldest_age_s": None if oldest is None else max(0.0, time.time() - oldest),
                "dropped": dict(self._dropped),
                "last_seq": self._last_seq,
            }

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            try:
                conn.close()  # the last connection checkpoints the WAL into the database
            except sqlite3.Error as exc:
                log.error("outbox.close_failed", path=str(self.path), error=str(exc))

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals (call with the lock held) ----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._conn

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _drop_for_age(self, conn: sqlite3.Connection, now: float) -> list[tuple[int, str, str]]:
        # Age applies to every kind: a verdict older than max_age_s is of no use to a PLC and
        # MES has to reconcile it from the log anyway. It is still counted and logged.
        cutoff = now - self.max_age_s
        old = conn.execute(
            "SELECT seq, kind FROM verdicts WHERE created < ? ORDER BY seq", (cutoff,)
        ).fetchall()
        if old:
            conn.execute("DELETE FROM verdicts WHERE created < ?", (cutoff,))
        return [(seq, kind, "max_age") for seq, kind in old]

    def _drop_oldest(self, conn: sqlite3.Connection, count: int) -> list[tuple[int, str, str]]:
        # Oldest OK first: an OK verdict lost costs a record in MES, a lost NG or ERROR can let a
        # bad part through, so those go only when no OK verdict is left to drop.
        victims = conn.execute(
            "SELECT seq, kind FROM verdicts WHERE kind = 'OK' ORDER BY seq LIMIT ?", (count,)
        ).fetchall()
        if len(victims) < count:
            victims += conn.execute(
                "SELECT seq, kind FROM verdicts WHERE kind != 'OK' ORDER BY seq LIMIT ?",
                (count - len(victims),),
            ).fetchall()
        conn.executemany("DELETE FROM verdicts WHERE seq = ?", [(seq,) for seq, _ in victims])
        return [(seq, kind, "max_rows") for seq, kind in victims]

    def _count_drops(self, conn: sqlite3.Connection, dropped: list[tuple[int, str, str]]) -> None:
        # persisted in the same transaction as the deletes: no drop goes uncounted
        for kind in KINDS:
            n = sum(1 for _, k, _ in dropped if k == kind)
            if n:
                self._set_meta(conn, f"dropped_{kind}", self._meta(conn, f"dropped_{kind}") + n)

    def _note_drops(self, dropped: list[tuple[int, str, str]]) -> None:
        """After the commit: update the counters in memory and log every drop."""
        groups: dict[tuple[str, str], list[int]] = {}
        for seq, kind, reason in dropped:
            groups.setdefault((kind, reason), []).append(seq)
        for (kind, reason), seqs in groups.items():
            self._dropped[kind] += len(seqs)
            fields = {
                "path": str(self.path),
                "kind": kind,
                "reason": reason,
                "count": len(seqs),
                "dropped_total": self._dropped[kind],
                "max_rows": self.max_rows,
                "max_age_s": self.max_age_s,
            }
            if kind == Verdict.OK:
                log.warning("outbox.dropped", seqs=seqs[:_SEQS_LOGGED_FOR_OK], **fields)
            else:
                log.error("outbox.dropped", seqs=seqs, **fields)
