"""The durable outbox for verdict messages (design.md, principle 4 "Nothing is lost").

A verdict is committed here, with its ``seq``, before it is published, and deleted only when the
broker has acknowledged it, so broker outages and daemon crashes lose nothing. The outbox is a
SQLite database in WAL mode with ``synchronous=FULL``: a committed append survives a killed
process and a power cut. ``sync="normal"`` skips the fsync per commit (the WAL is synced at
checkpoints): a killed process still loses nothing, a power cut may lose the last verdicts; for
disks whose fsync costs milliseconds (eMMC, SD cards) on boxes with a UPS. Several verdicts can
be committed in one transaction (``append_many``): under load the fsync is shared, at low rates
a verdict costs one.

**seq.** The outbox owns the per-station ``seq`` that consumers de-duplicate on. The number is
allocated in the transaction that stores the verdict. The ``meta`` table holds a high-water mark
("numbers up to here may have been handed out") that is moved ``SEQ_RESERVE`` ahead inside the
same transactions, at no extra fsync; a clean ``close()`` shrinks it to the last number used. A
new process starts above the mark: after a clean stop seq simply continues, after a crash it
jumps forward (by at most ``SEQ_RESERVE``), and it never goes backwards or repeats.

**Bounds.** Rows and age are bounded. When it must drop, it drops the oldest OK verdicts first
and NG or ERROR only when no OK verdict is left; every drop is counted by kind (persisted, in
``stats()``) and logged (``log.error`` with the seqs for NG/ERROR).

**When the disk fails** (full, read-only, I/O error), appending does not fail: the verdict is kept
in memory instead, its JSON payloads say ``"durable": false``, ``stats()`` says why, and it is
published like any other; it is lost only if the process ends before the broker acknowledges it.
The next append tries the disk again. Seqs handed out meanwhile come from the reservation the
file already holds, so the next process starts above them whatever happens. Past the reservation
(at 20 parts/s over an hour of a failing disk), or for a file that cannot even be opened
(``Outbox.in_memory``, which tries to open it again at most every ``REOPEN_S``), no seq is safe:
the next process would start from the file's mark and hand the same numbers out again (issue 31:
21-40 twice, and a PLC gateway skipping "old" seqs ignored five rejects). ``append_many`` then
gives those verdicts no seq (0) and stores nothing; ``problems()`` says ``seq_unavailable``.

**Clocks.** Ages (``max_age_s``) and reject expiry run on the monotonic clock, so a step of the
wall clock (NTP after an outage, an operator) neither drops young rows nor keeps old ones:
each row stores its wall time (``created``, for people), its monotonic time and the boot it
was stored in (``inspectd.clock``); a message's expiry is stored both ways too. At open, rows of
an earlier boot (or of a file written before these columns existed) are moved onto this boot's
monotonic clock with the age the wall clock gives them, clamped as ``Clock`` says.

**A bounded WAL.** Each verdict and its acknowledgement write about eight 4 KiB pages to the
WAL; SQLite's default checkpoint (1000 pages) let the WAL grow to 4 MiB, which filled a small
state folder for good (checkpointing needs room, and nothing else freed any). Once the WAL
passes ``WAL_LIMIT_BYTES`` a checkpoint thread, on its own connection, copies it back (PASSIVE:
it never blocks a writer) and it is cut back to that size when it restarts. SQLite's own
checkpoint ran on the committing thread, and its fsyncs were the p99 of an append with
``sync: normal`` (2.3 ms, now 1.2 ms, one verdict every 5 ms in ``bench/outbox.py``); the
committing thread now checkpoints only when the WAL reaches twice the limit (writes that never
pause let no passive checkpoint finish). A write that fails is retried once after a TRUNCATE
checkpoint, and the first write that works again checkpoints too, so the folder recovers
without a restart once space is back. Acknowledgements the disk refused are retried on later
writes.

**Quarantine.** A row that cannot be sent as it is stored (a kind that is no verdict, a QoS
MQTT does not have, a payload that is not bytes: damaged on disk, or written by something else)
or that the broker refused for good (``inspectd.delivery``) is set aside, not deleted: its
``quarantined`` column says why, ``pending()`` skips it, so the rows after it go on, and it is
counted (``stats()``). Before, one such row ended the feeder thread at every start.
``quarantined_rows()`` reads them for another try; an acknowledgement deletes them as usual.

Schema: one row per verdict in ``verdicts`` and its MQTT messages (the verdict, plus the reject
for NG and ERROR) in ``messages``, keyed by (seq, idx), so each message is acknowledged on its
own PUBACK and after a crash only the unacknowledged ones are sent again.

One process per station: the outbox keeps its depth in memory and is not meant to be written by
two processes at once (reading it with the sqlite3 shell while the daemon runs is fine).
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import structlog

from inspectd.clock import SYSTEM, Clock
from inspectd.verdict import Verdict, iso_utc

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
SYNC_MODES = ("full", "normal")
SEQ_RESERVE = 100_000  # numbers reserved ahead on disk; the most seq can jump after a crash
REOPEN_S = 1.0  # an outbox that could not be opened tries again at most this often
WAL_LIMIT_BYTES = 512 * 1024  # checkpointed past this (SQLite's default let it reach 4 MiB)
NOT_STORABLE = "not_storable"  # drop reason: a verdict whose messages could not be built
KINDS = tuple(v.value for v in Verdict)
_SEQS_LOGGED_FOR_OK = 20  # OK drops log a count and the first seqs; NG/ERROR drops log all seqs

_SCHEMA = (
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
_ADDED_COLUMNS = (
    ("verdicts", "created_mono", "REAL"),
    ("verdicts", "boot_id", "TEXT"),
    ("messages", "expires_mono", "REAL"),
    ("verdicts", "quarantined", "TEXT"),  # why the row is set aside; NULL: it is sent
)
_AFTER_COLUMNS = (
    "CREATE INDEX IF NOT EXISTS verdicts_created_mono ON verdicts (created_mono)",
    "CREATE INDEX IF NOT EXISTS verdicts_quarantined ON verdicts (seq)"
    " WHERE quarantined IS NOT NULL",
)
# A kind a damaged row may hold counts as ERROR when dropped: as bad to lose as an ERROR.
_KIND = f"CASE WHEN kind IN {KINDS!r} THEN kind ELSE 'ERROR' END"
_ROWS = (  # a verdict and its messages not yet acknowledged; {where}: which verdicts
    "SELECT v.seq, v.kind, v.created, v.replayed, v.created_mono, v.quarantined, m.idx, m.topic,"
    " m.payload, m.qos, m.retain, m.content_type, m.expires, m.expires_mono"
    " FROM (SELECT * FROM verdicts WHERE {where} ORDER BY seq LIMIT ?) AS v"
    " LEFT JOIN messages AS m ON m.seq = v.seq ORDER BY v.seq, m.idx"
)


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or read, or the outbox is closed."""


class MessageLike(Protocol):
    """What ``append`` stores of a message."""

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
    @property
    def expires(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """A message to store. ``expires``: wall time after which it is not worth sending (a reject
    for a part that has left the diverter); the publisher turns it into MQTT 5 message expiry."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = "application/json"
    expires: float | None = None
    expires_mono: float | None = None  # the same deadline on the monotonic clock; it decides


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
    expires: float | None
    expires_mono: float | None = None  # this process's monotonic clock (rebased at open)


@dataclass(frozen=True, slots=True)
class Row:
    """One verdict waiting for its PUBACKs, with the messages not yet acknowledged, in order.

    ``replayed``: an earlier process stored it and did not see it acknowledged (see
    ``Outbox.mark_replayed``); its JSON payloads with a ``"replayed"`` key read back with
    ``"replayed": true``. ``durable``: False for a verdict kept in memory because the disk
    failed (its payloads say ``"durable": false``)."""

    seq: int
    kind: Verdict
    created: float
    replayed: bool
    messages: tuple[StoredMessage, ...]
    durable: bool = True
    created_mono: float | None = None  # this process's monotonic clock (rebased at open)
    quarantined: str | None = None  # why it is set aside (see the module docstring)


_Now = tuple[float, float]  # (wall, monotonic)
MessagesArg = Sequence[MessageLike] | Callable[[int], Iterable[MessageLike]]
_Stored = tuple[str, bytes, int, int, str | None, float | None, float | None]  # checked


def set_flags(payload: bytes, **flags: bool) -> bytes:
    """Set boolean flags in a JSON object payload, only where the key exists already.

    Same compact form as ``inspectd.messages.encode_json``: a JSON round trip keeps key
    order and float text, so only the flags change. Anything else passes through unchanged."""
    if not payload.startswith(b"{"):
        return payload
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict):
        return payload
    todo = {k: v for k, v in flags.items() if k in obj and obj[k] is not v}
    if not todo:
        return payload
    obj.update(todo)
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


def _checked(message: MessageLike) -> _Stored:
    topic, payload, qos = message.topic, message.payload, message.qos
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
        raise ValueError(f"cannot publish on topic {topic!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if qos not in (0, 1, 2):
        raise ValueError(f"invalid QoS {qos!r}")
    topic.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    content_type = getattr(message, "content_type", None)
    if content_type is not None:
        content_type.encode("utf-8")
    expires = _deadline(getattr(message, "expires", None))
    expires_mono = _deadline(getattr(message, "expires_mono", None))
    return (
        topic,
        bytes(payload),
        qos,
        int(bool(message.retain)),
        content_type,
        expires,
        expires_mono,
    )


def _deadline(value: Any) -> float | None:
    # checked here: a bad value raising inside the transaction would cost the whole batch
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"expiry must be finite, got {value!r}")
    return value


def _key_blob(key: str) -> bytes:
    # file names that are not UTF-8 arrive with surrogate escapes; a BLOB keeps them exactly
    return key.encode("utf-8", "surrogateescape")


def _row(joined: list[tuple[Any, ...]]) -> Row:
    """One verdict read back with its messages (``_ROWS``' lines for it). Anything wrong with
    what is stored raises here, where it costs that row only, not in the publisher: the
    checks of ``append`` again, since the file may have changed since."""
    seq, kind, created, replayed, created_mono, quarantined, first_idx, *_ = joined[0]
    if first_idx is None:  # LEFT JOIN: no message (each acknowledgement deletes its verdict)
        raise ValueError("no message left to send")
    messages = []
    for *_, idx, topic, payload, qos, retain, content_type, expires, expires_mono in joined:
        m = StoredMessage(
            seq, idx, topic, payload, qos, bool(retain), content_type, expires, expires_mono
        )
        _checked(m)
        if replayed:
            m = replace(m, payload=set_flags(payload, replayed=True))
        messages.append(m)
    return Row(
        seq,
        Verdict(kind),
        created,
        bool(replayed),
        tuple(messages),
        created_mono=created_mono,
        quarantined=quarantined,
    )


def _read_high_water(path: Path) -> int | None:
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


class _Checkpointer:
    """Copies the WAL into the database on its own thread and connection when asked. PASSIVE
    waits for no one and blocks no writer; what it could not copy (frames written meanwhile)
    the next request copies. ``lock`` is held while it runs: a TRUNCATE checkpoint on another
    connection takes it first rather than fail on SQLite's checkpoint lock."""

    def __init__(self, path: Path, sync: str) -> None:
        self._conn = sqlite3.connect(
            path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute(f"PRAGMA synchronous={sync.upper()}")  # the checkpoint's fsyncs
        except sqlite3.Error:
            self._conn.close()
            raise
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="outbox-checkpoint", daemon=True)
        self.thread.start()

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                with self.lock:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:  # e.g. a full disk: the committing thread's fallback
                log.debug("outbox.checkpoint_failed", error=str(exc))

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self.thread.join()
        self._conn.close()


class Outbox:
    """Durable, bounded, thread-safe store of verdict messages that owns ``seq``.

    ``append``/``append_many`` commit (fsync) before they return. All methods may be called from
    any thread; ``ack_many`` is meant to batch PUBACKs rather than fsync on paho's thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        start_after: int = 0,
        sync: str = "full",
        clock: Clock = SYSTEM,
        _open: bool = True,
    ) -> None:
        """``clock``: where wall and monotonic time come from (tests pass one that jumps)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if start_after < 0:
            raise ValueError(f"start_after must be >= 0, got {start_after}")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
        self.path = Path(path)
        self.sync = sync
        self.max_rows = max_rows
        self.max_age_s = float(max_age_s)
        self.clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._closed = False
        self._volatile: dict[int, Row] = {}  # verdicts the disk could not take, by seq
        self._write_error: str | None = None  # why the last write failed; None once one worked
        self._no_seq: tuple[int, str] | None = None  # verdicts given no seq, since when (wall)
        self._reopen_at = 0.0  # monotonic; for an outbox that could not be opened
        self._acks_to_retry: list[tuple[int, int | None]] = []  # acks the disk refused
        self._depth = 0
        self._quarantined = 0  # rows on disk set aside (see the module docstring)
        self._quarantine_last: str | None = None  # the latest: "seq N: why"
        self._last_seq = self._reserved = self._inherited_seq = start_after
        self._dropped = dict.fromkeys(KINDS, 0)
        self._dropped_at_open = 0
        if _open:
            self._connect(start_after)

    def _connect(self, start_after: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._open(start_after)
            self._checkpointer = _Checkpointer(self.path, self.sync)
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._dropped_at_open = sum(self._dropped.values())  # the file counts since it was made

    @classmethod
    def in_memory(cls, path: Path, reason: str, **bounds: Any) -> Outbox:
        """An outbox for a file that cannot be opened. It holds no seq reservation, so it gives
        verdicts no seq (see the module docstring) until an append finds the file can be opened
        again (tried at most every ``REOPEN_S``); from then on it is an ordinary outbox."""
        outbox = cls(path, _open=False, **bounds)
        known = _read_high_water(outbox.path) or 0
        outbox._last_seq = outbox._reserved = outbox._inherited_seq = max(outbox._last_seq, known)
        outbox._write_error = reason
        outbox._reopen_at = outbox.clock.mono() + REOPEN_S
        log.error(
            "outbox.in_memory",
            path=str(outbox.path),
            reason=reason,
            last_seq=outbox._last_seq,
            detail="no seq can be handed out that a restart could not repeat: verdicts are "
            "ERROR and not published until the outbox can be opened; fix the state folder",
        )
        return outbox

    def _reopen(self) -> None:
        """For an outbox that could not be opened: try again, at most every ``REOPEN_S``."""
        if self._conn is not None or self.clock.mono() < self._reopen_at:
            return
        self._reopen_at = self.clock.mono() + REOPEN_S
        try:
            self._connect(self._last_seq)
        except OutboxError as exc:
            self._write_error = str(exc)
            return
        log.warning("outbox.opened_again", path=str(self.path), last_seq=self._last_seq)
        self._write_error = None
        self.mark_replayed()

    def _open(self, start_after: int) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        conn = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        self._conn = conn  # closed by __init__ if anything below fails
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a file system without shared memory for the WAL
            raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL could not be enabled")
        conn.execute(f"PRAGMA synchronous={self.sync.upper()}")  # see the module docstring
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread's work, see above
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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
            last = max(self._meta(conn, "reserved_seq"), max_row_seq, start_after)
            self._set_meta(conn, "reserved_seq", last + SEQ_RESERVE)
            self._add_columns(conn)
            rebased = self._rebase_clocks(conn)
            (self._depth,) = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()
            self._quarantined = self._count_quarantined(conn)
        self._last_seq = last
        self._reserved = last + SEQ_RESERVE
        self._inherited_seq = max_row_seq  # rows up to here were left by an earlier process
        self._dropped = {k: self._meta(conn, f"dropped_{k}") for k in KINDS}
        log.info(
            "outbox.opened",
            path=str(self.path),
            depth=self._depth,
            last_seq=last,
            start_after=start_after or None,
            rebased=rebased or None,
            quarantined=self._quarantined or None,
        )
        return conn

    # -- public API -----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest seq handed out, or the high-water mark an earlier process left."""
        with self._lock:
            return self._last_seq

    @property
    def durable(self) -> bool:
        """False while the disk refuses writes (verdicts are then kept in memory)."""
        with self._lock:
            return self._write_error is None

    def append(self, kind: Verdict | str, messages: MessagesArg) -> int:
        """Store one verdict; returns its seq. See ``append_many``."""
        return self.append_many([(kind, messages)])[0]

    def append_many(
        self,
        items: Sequence[tuple[Verdict | str, MessagesArg]],
        *,
        receipts: Sequence[str | None] = (),
    ) -> list[int]:
        """Store verdicts under consecutive seqs, in one transaction; returns the seqs, 0 for
        a verdict that can be given no safe seq (none stored, see the module docstring).

        ``receipts[i]`` (if given and not None) is stored with item i in the same transaction
        (see ``receipts()``); kept in memory verdicts store none.

        Each item's messages are a list, or a callable ``seq -> messages`` for payloads that
        carry the seq (the verdict payload does); it runs under the lock, so keep it short. If
        one raises (or gives a message that cannot be stored), that verdict alone is not stored:
        its seq is used up all the same (never handed out twice), and it is counted and logged
        as dropped (reason ``not_storable``); the others are stored. No messages (MQTT off): the
        verdict only takes a seq. Makes room first when the outbox is at ``max_rows`` or holds rows
        older than ``max_age_s`` (dropping, see the module docstring). Never fails because the
        outbox is full or the disk refuses the write (see the module docstring)."""
        kinds = [Verdict(kind) for kind, _ in items]  # ValueError for anything but OK/NG/ERROR
        with self._lock:
            if self._closed:
                raise OutboxError(f"outbox {self.path} is closed")
            self._reopen()
            first = self._last_seq + 1
            built: list[tuple[int, Verdict, list[_Stored]]] = []
            failed: list[tuple[int, str, str]] = []
            for offset, (kind, (_, messages)) in enumerate(zip(kinds, items, strict=True)):
                seq = first + offset
                try:
                    given = messages(seq) if callable(messages) else messages
                    stored = [_checked(m) for m in given]
                except Exception as exc:  # one bad record must not cost the batch
                    log.exception(
                        "outbox.not_storable",
                        path=str(self.path),
                        seq=seq,
                        kind=kind.value,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    failed.append((seq, kind.value, NOT_STORABLE))
                    stored = []
                built.append((seq, kind, stored))
            if not built:
                return []
            # Spent from here on, whatever fails below: a seq is never handed out twice.
            self._last_seq = built[-1][0]
            now = (self.clock.wall(), self.clock.mono())
            if self._conn is not None and self._append_with_retry(built, now, receipts):
                self._no_seq = None
            else:
                # In memory, only under the reservation on disk: past it a restart repeats seqs.
                built = [b for b in built if b[0] <= self._reserved]
                self._last_seq = max(first - 1, min(self._last_seq, self._reserved))
                self._append_to_memory(built, now)
            spent = {seq for seq, _, _ in built}
            failed = [f for f in failed if f[0] in spent]
            if failed:
                self._count_not_storable(failed)
            if len(spent) < len(items):
                self._refuse_seqs(len(items) - len(spent), now[0])
            return [seq if seq in spent else 0 for seq in range(first, first + len(items))]

    def _append_with_retry(
        self,
        built: list[tuple[int, Verdict, list[_Stored]]],
        now: _Now,
        receipts: Sequence[str | None],
    ) -> bool:
        """A write the disk refused is tried once more if a TRUNCATE checkpoint frees the WAL's
        space (a full disk that only the WAL filled)."""
        if self._append_to_disk(built, now, receipts):
            return True
        return self._checkpoint() and self._append_to_disk(built, now, receipts)

    def pending(self, limit: int = 100, *, after: int = 0) -> list[Row]:
        """Up to ``limit`` verdicts with seq > ``after``, in seq order, with their messages not
        yet acknowledged. Does not drop anything; a row that cannot be read back as it must be
        is quarantined on the way (and logged), and the rows after it are returned."""
        with self._lock:
            self._check_open()
            rows = self._valid_rows("quarantined IS NULL", after, limit, set_aside=True)
            memory = [r for s, r in self._volatile.items() if s > after and not r.quarantined]
        if memory:
            rows = sorted(rows + memory, key=lambda r: r.seq)[:limit]
        return rows

    def quarantined_rows(self, limit: int = 100) -> list[Row]:
        """Up to ``limit`` quarantined verdicts that can be read back now, in seq order, for
        another try (one the broker refused may be taken now); ``Row.quarantined`` says why."""
        with self._lock:
            self._check_open()
            rows = self._valid_rows("quarantined IS NOT NULL", 0, limit, set_aside=False)
            memory = [r for r in self._volatile.values() if r.quarantined]
        if memory:
            rows = sorted(rows + memory, key=lambda r: r.seq)[:limit]
        return rows

    def quarantine(self, seq: int, reason: str) -> None:
        """Set verdict ``seq`` aside (see the module docstring): it stays, counted, and is no
        longer ``pending()``. Unknown seqs are ignored (acknowledged or dropped meanwhile)."""
        with self._lock:
            self._check_open()
            row = self._volatile.get(seq)
            if row is not None:
                self._volatile[seq] = replace(row, quarantined=reason)
                self._note_quarantined({seq: reason})
            elif self._conn is not None:
                self._set_aside({seq: reason})

    def threads(self) -> dict[str, threading.Thread | None]:
        """The checkpoint thread, for the station's thread watch."""
        checkpointer = self._checkpointer
        return {"outbox-checkpoint": checkpointer.thread if checkpointer is not None else None}

    def quarantine_summary(self) -> tuple[int, str | None]:
        """(how many verdicts are quarantined, the latest "seq N: why"), from memory."""
        with self._lock:
            return self._quarantined_total(), self._quarantine_last

    def ack(self, seq: int, idx: int | None = None) -> bool:
        """The broker acknowledged message ``idx`` of verdict ``seq`` (all of them when ``idx``
        is None). True if something was deleted. See ``ack_many``."""
        return self.ack_many([(seq, idx)]) > 0

    def ack_many(self, acks: Iterable[tuple[int, int | None]]) -> int:
        """Delete acknowledged messages, and each verdict once none of its messages is left, in
        one transaction. Acknowledging an unknown seq or idx is harmless (a PUBACK for a row
        dropped meanwhile). Not synced to disk on its own (the next append syncs it): after a
        power cut an acknowledged verdict may be sent once more, which consumers de-duplicate.
        If the disk refuses the delete, the row stays and is sent again after a restart.
        Returns how many messages were deleted."""
        on_disk: list[tuple[int, int | None]] = []
        changed = 0
        with self._lock:
            self._check_open()
            for seq, idx in acks:
                row = self._volatile.get(seq)
                if row is None:
                    on_disk.append((seq, idx))
                    continue
                kept = tuple(m for m in row.messages if idx is not None and m.idx != idx)
                changed += len(row.messages) - len(kept)
                if kept:
                    self._volatile[seq] = replace(row, messages=kept)
                else:
                    del self._volatile[seq]
            if on_disk and self._conn is not None:
                changed += self._ack_on_disk(on_disk)
        return changed

    def mark_replayed(self) -> int:
        """Flag the verdicts an earlier process stored and did not see acknowledged, so they are
        published again with ``"replayed": true``. Call once at startup; rows appended by this
        process are never flagged. Returns how many rows were flagged."""
        with self._lock:
            conn = self._check_open()
            if conn is None:
                return 0
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
            conn = self._check_open()
            now = (self.clock.wall(), self.clock.mono())
            dropped = self._drop_in_memory(0, now)
            if conn is not None:
                self._retry_acks()  # an idle line: nothing else would
                try:
                    with _transaction(conn):
                        on_disk = self._drop_for_age(conn, now)
                        self._count_drops(conn, on_disk)
                except sqlite3.Error as exc:
                    self._disk_failed("prune", exc)
                else:
                    self._depth -= len(on_disk)
                    if on_disk:
                        self._recount_quarantined()
                    dropped += on_disk
            self._note_drops(dropped)
            return len(dropped)

    def receipts(self) -> list[tuple[str, int, Verdict]]:
        """(key, seq, kind) of every receipt stored with a verdict and not forgotten, by seq."""
        with self._lock:
            conn = self._check_open()
            if conn is None:
                return []
            try:
                rows = conn.execute("SELECT key, seq, kind FROM receipts ORDER BY seq").fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        return [
            (bytes(k).decode("utf-8", "surrogateescape"), int(s), Verdict(v)) for k, s, v in rows
        ]

    def forget_receipts(self, keys: Iterable[str]) -> None:
        """Delete receipts the source no longer needs. Not synced on its own, like an ack: a
        receipt that comes back after a power cut only names a file that is gone."""
        blobs = [(_key_blob(k),) for k in keys]
        with self._lock:
            conn = self._check_open()
            if conn is None or not blobs:
                return
            try:
                conn.execute("PRAGMA synchronous=NORMAL")
                with _transaction(conn):
                    conn.executemany("DELETE FROM receipts WHERE key = ?", blobs)
            except sqlite3.Error as exc:
                log.warning(
                    "outbox.receipts_not_forgotten",
                    path=str(self.path),
                    count=len(blobs),
                    error=str(exc),
                )
            finally:
                try:
                    conn.execute(f"PRAGMA synchronous={self.sync.upper()}")
                except sqlite3.Error:
                    pass

    def stats(self) -> dict[str, Any]:
        """For health/stats: depth (verdicts held, in memory and quarantined ones included),
        in_memory, quarantined, oldest_age_s (None when empty), dropped by kind (since the file
        was created), last_seq, durable and the write error."""
        with self._lock:
            conn = self._check_open()
            oldest = min(
                (r.created_mono for r in self._volatile.values() if r.created_mono is not None),
                default=None,
            )
            if conn is not None:
                try:
                    (on_disk,) = conn.execute("SELECT MIN(created_mono) FROM verdicts").fetchone()
                except sqlite3.Error:
                    on_disk = None
                if on_disk is not None:
                    oldest = on_disk if oldest is None else min(oldest, on_disk)
            return {
                "depth": self._depth + len(self._volatile),
                "in_memory": len(self._volatile),
                "quarantined": self._quarantined_total(),
                "oldest_age_s": None if oldest is None else max(0.0, self.clock.mono() - oldest),
                "dropped": dict(self._dropped),
                "last_seq": self._last_seq,
                "durable": self._write_error is None,
                "error": self._write_error,
            }

    def problems(self) -> list[str]:
        """``outbox_not_durable`` while the disk refuses writes, ``seq_unavailable`` while
        verdicts get no seq, ``outbox_dropped`` once a verdict was dropped since this process
        opened the file. From memory: no disk read."""
        with self._lock:
            error, dropped = self._write_error, dict(self._dropped)
            no_seq, reserved = self._no_seq, self._reserved
        problems = [] if error is None else [f"outbox_not_durable: {error}"]
        if no_seq is not None:
            problems.append(
                f"seq_unavailable: {no_seq[0]} verdicts since {no_seq[1]} got no seq (ERROR, "
                f"not published): the state folder cannot hold the seq reservation past "
                f"{reserved}"
            )
        since = sum(dropped.values()) - self._dropped_at_open
        if since > 0:
            problems.append(f"outbox_dropped: {since} verdicts since start ({dropped})")
        return problems

    def close(self) -> None:
        """Shrink the seq reservation to the last number used (a clean restart leaves no gap)
        and close the file. Verdicts still held in memory are lost, and logged."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._volatile:
                log.error(
                    "outbox.closed_with_memory_rows",
                    path=str(self.path),
                    seqs=sorted(self._volatile)[:50],
                    count=len(self._volatile),
                    detail="not acknowledged by the broker and not on disk: lost",
                )
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if self._checkpointer is not None:
                self._checkpointer.close()  # before conn: the last connection closed checkpoints
            try:
                # Shrinking is only safe if every seq handed out is known to the file.
                if self._write_error is None:
                    with _transaction(conn):
                        self._set_meta(conn, "reserved_seq", self._last_seq)
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

    def _check_open(self) -> sqlite3.Connection | None:
        if self._closed:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._conn

    def _append_to_disk(
        self,
        built: list[tuple[int, Verdict, list[_Stored]]],
        now: _Now,
        receipts: Sequence[str | None] = (),
    ) -> bool:
        conn = self._conn
        assert conn is not None
        last = built[-1][0]
        with_rows = [(seq, kind, msgs) for seq, kind, msgs in built if msgs]
        try:
            with _transaction(conn):
                dropped = self._drop_for_age(conn, now)
                depth = self._depth - len(dropped)
                excess = depth + len(with_rows) - self.max_rows
                if excess > 0:
                    dropped += self._drop_oldest(conn, excess)
                self._count_drops(conn, dropped)
                wall, mono = now
                conn.executemany(
                    "INSERT INTO verdicts (seq, kind, created, created_mono, boot_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [
                        (seq, kind.value, wall, mono, self.clock.boot_id)
                        for seq, kind, _ in with_rows
                    ],
                )
                conn.executemany(
                    "INSERT INTO messages (seq, idx, topic, payload, qos, retain, content_type,"
                    " expires, expires_mono) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(seq, i, *m) for seq, _, msgs in with_rows for i, m in enumerate(msgs)],
                )
                if receipts:  # receipts[i] belongs to built[i] (one entry per item)
                    conn.executemany(
                        "INSERT OR REPLACE INTO receipts (key, seq, kind) VALUES (?, ?, ?)",
                        [
                            (_key_blob(key), seq, kind.value)
                            for (seq, kind, _), key in zip(built, receipts, strict=False)
                            if key is not None
                        ],
                    )
                reserved = self._reserved
                if last > self._reserved - SEQ_RESERVE // 2:
                    reserved = max(last, self._reserved) + SEQ_RESERVE
                    self._set_meta(conn, "reserved_seq", reserved)
        except Exception as exc:  # sqlite's errors, or a value it cannot bind
            self._disk_failed(f"store seq {built[0][0]}..{last}", exc)
            return False
        # committed: only now does the in-memory state move on
        self._reserved = reserved
        self._depth += len(with_rows) - len(dropped)
        if dropped:
            self._recount_quarantined()
        self._note_drops(dropped)
        if self._write_error is not None:
            log.warning("outbox.disk_ok_again", path=str(self.path), seq=built[0][0])
            self._write_error = None
            self._checkpoint()  # give back what the WAL took while the disk was short
        else:
            self._bound_wal()
        self._retry_acks()
        return True

    def _refuse_seqs(self, count: int, wall: float) -> None:
        if self._no_seq is None:
            log.error(
                "outbox.seq_unavailable",
                path=str(self.path),
                last_seq=self._last_seq,
                reason=self._write_error,
                detail="no seq is handed out that a restart could repeat: verdicts are ERROR "
                "and not published until the disk takes the reservation",
            )
            self._no_seq = (0, iso_utc(wall))
        self._no_seq = (self._no_seq[0] + count, self._no_seq[1])

    def _append_to_memory(self, built: list[tuple[int, Verdict, list[_Stored]]], now: _Now) -> None:
        for seq, kind, msgs in built:
            if not msgs:
                continue
            if len(self._volatile) >= self.max_rows:
                self._note_drops(self._drop_in_memory(len(self._volatile) - self.max_rows + 1, now))
            stored = tuple(
                StoredMessage(seq, i, t, set_flags(p, durable=False), q, bool(r), c, e, em)
                for i, (t, p, q, r, c, e, em) in enumerate(msgs)
            )
            self._volatile[seq] = Row(
                seq, kind, now[0], False, stored, durable=False, created_mono=now[1]
            )

    def _drop_in_memory(self, count: int, now: _Now) -> list[tuple[int, str, str]]:
        """Age first, then the oldest OK, then the oldest NG/ERROR, as on disk."""
        cutoff = now[1] - self.max_age_s
        dropped = [
            (s, r.kind.value, "max_age")
            for s, r in self._volatile.items()
            if r.created_mono is not None and r.created_mono < cutoff
        ]
        for seq, _, _ in dropped:
            del self._volatile[seq]
        count -= len(dropped)
        if count > 0:
            order = sorted(self._volatile.values(), key=lambda r: (r.kind != Verdict.OK, r.seq))
            for row in order[:count]:
                del self._volatile[row.seq]
                dropped.append((row.seq, row.kind.value, "max_rows"))
        return dropped

    def _disk_failed(self, what: str, exc: Exception) -> None:
        first = self._write_error is None
        self._write_error = f"cannot {what} in {self.path}: {exc}"
        (log.error if first else log.debug)(
            "outbox.disk_failed",
            path=str(self.path),
            error=self._write_error,
            detail="verdicts are kept in memory and published, not durable, until it works",
        )

    def _valid_rows(self, where: str, after: int, limit: int, *, set_aside: bool) -> list[Row]:
        """Up to ``limit`` rows with seq > ``after`` that ``where`` selects and that can be read
        back (``_row``), in seq order. One that cannot is quarantined if ``set_aside`` and more
        are read in its place: fewer than ``limit`` still means there are no more."""
        rows: list[Row] = []
        while self._conn is not None and len(rows) < limit:
            read, bad, last = self._read_rows(f"seq > ? AND {where}", after, limit - len(rows))
            rows += read
            if bad and set_aside:
                self._set_aside(bad)
            if not bad or last is None:
                break
            after = last
        return rows

    def _read_rows(
        self, where: str, after: int, limit: int
    ) -> tuple[list[Row], dict[int, str], int | None]:
        """(rows read back, {seq: why} of those that could not be, the last seq looked at)."""
        conn = self._conn
        assert conn is not None
        try:
            lines = conn.execute(_ROWS.format(where=where), (after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
        rows: list[Row] = []
        bad: dict[int, str] = {}
        for seq, joined in itertools.groupby(lines, key=lambda line: line[0]):
            try:
                rows.append(_row(list(joined)))
            except Exception as exc:  # whatever is wrong with it, it costs this row only
                bad[seq] = f"stored row cannot be sent: {type(exc).__name__}: {exc}"
        return rows, bad, lines[-1][0] if lines else None

    def _set_aside(self, reasons: dict[int, str]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            with _transaction(conn):
                stored = {
                    seq: why
                    for seq, why in reasons.items()
                    if conn.execute(
                        "UPDATE verdicts SET quarantined = ? WHERE seq = ?", (why, seq)
                    ).rowcount
                }
                self._quarantined = self._count_quarantined(conn)
        except sqlite3.Error as exc:  # skipped all the same; set aside when read again
            log.error(
                "outbox.quarantine_failed", path=str(self.path), reasons=reasons, error=str(exc)
            )
            return
        self._note_quarantined(stored)

    def _note_quarantined(self, reasons: dict[int, str]) -> None:
        for seq, why in reasons.items():
            self._quarantine_last = f"seq {seq}: {why}"
            log.error(
                "outbox.quarantined",
                path=str(self.path),
                seq=seq,
                reason=why,
                quarantined=self._quarantined_total(),
                detail="set aside, not deleted: kept in the outbox, counted, tried again later",
            )

    def _quarantined_total(self) -> int:
        return self._quarantined + sum(1 for r in self._volatile.values() if r.quarantined)

    @staticmethod
    def _count_quarantined(conn: sqlite3.Connection) -> int:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM verdicts WHERE quarantined IS NOT NULL"
        ).fetchone()
        return int(count)

    def _recount_quarantined(self) -> None:
        """After rows were deleted: some may have been quarantined (only then is it read)."""
        if self._quarantined and self._conn is not None:
            try:
                self._quarantined = self._count_quarantined(self._conn)
            except sqlite3.Error:
                pass  # the next delete counts again

    def _ack_on_disk(self, acks: list[tuple[int, int | None]]) -> int:
        conn = self._conn
        assert conn is not None
        changed = gone = 0
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # see ack_many: an ack may be lost
            with _transaction(conn):
                for seq, idx in acks:
                    if idx is None:
                        changed += conn.execute(
                            "DELETE FROM messages WHERE seq = ?", (seq,)
                        ).rowcount
                    else:
                        changed += conn.execute(
                            "DELETE FROM messages WHERE seq = ? AND idx = ?", (seq, idx)
                        ).rowcount
                    gone += conn.execute(
                        "DELETE FROM verdicts WHERE seq = ? AND NOT EXISTS"
                        " (SELECT 1 FROM messages WHERE seq = ?)",
                        (seq, seq),
                    ).rowcount
        except sqlite3.Error as exc:
            # kept and tried again with the next write that works (a full disk frees up)
            self._acks_to_retry.extend(acks)
            log.warning(
                "outbox.ack_not_stored",
                path=str(self.path),
                seqs=[s for s, _ in acks][:50],
                error=str(exc),
                detail="tried again with the next write; if the daemon stops first, sent again"
                " after the restart (consumers de-duplicate on seq)",
            )
            return 0
        finally:
            try:
                conn.execute(f"PRAGMA synchronous={self.sync.upper()}")
            except sqlite3.Error:
                pass
        self._depth -= gone
        if gone:
            self._recount_quarantined()
        self._bound_wal()
        return changed

    def _retry_acks(self) -> None:
        if self._acks_to_retry and self._conn is not None:
            acks, self._acks_to_retry = self._acks_to_retry, []
            self._ack_on_disk(acks)

    def _wal_bytes(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except OSError:
            return 0

    def _bound_wal(self) -> None:
        """After a commit: past the limit the checkpoint thread copies the WAL back; at twice
        the limit its passive checkpoints could not finish (writes without a pause), and this
        thread checkpoints itself."""
        size = self._wal_bytes()
        if size > 2 * WAL_LIMIT_BYTES:
            self._checkpoint()
        elif size > WAL_LIMIT_BYTES and self._checkpointer is not None:
            self._checkpointer.request()

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it to 0 bytes; False if it could not."""
        conn = self._conn
        if conn is None:
            return False
        try:
            with self._checkpointer.lock if self._checkpointer else nullcontext():
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("outbox.checkpoint_failed", path=str(self.path), error=str(exc))
            return False
        return not busy

    def _count_not_storable(self, failed: list[tuple[int, str, str]]) -> None:
        """Counted as dropped, persisted where the disk allows: health shows it either way."""
        conn = self._conn
        if conn is not None:
            try:
                with _transaction(conn):
                    self._count_drops(conn, failed)
            except sqlite3.Error as exc:
                self._disk_failed(f"count seqs {[s for s, _, _ in failed]} not stored", exc)
        self._note_drops(failed)

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        for table, column, decl in _ADDED_COLUMNS:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        for statement in _AFTER_COLUMNS:
            conn.execute(statement)

    def _rebase_clocks(self, conn: sqlite3.Connection) -> int:
        """Put rows of an earlier boot (or from before created_mono) on this boot's monotonic
        clock, as old as the wall clock says, clamped (``inspectd.clock``): never below 0, and
        for a row known to be from an earlier boot, never below the time since this boot. A
        message's expiry keeps its distance from the row's creation. Returns how many rows."""
        params = {"mono": self.clock.mono(), "wall": self.clock.wall(), "boot": self.clock.boot_id}
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

    def _drop_for_age(self, conn: sqlite3.Connection, now: _Now) -> list[tuple[int, str, str]]:
        # Age applies to every kind: a verdict older than max_age_s is of no use to a PLC and
        # MES has to reconcile it from the log anyway. It is still counted and logged. On the
        # monotonic clock: a wall clock stepped forward must not age young rows.
        cutoff = now[1] - self.max_age_s
        old = conn.execute(
            f"SELECT seq, {_KIND} FROM verdicts WHERE created_mono < ? ORDER BY seq", (cutoff,)
        ).fetchall()
        if old:
            conn.execute("DELETE FROM verdicts WHERE created_mono < ?", (cutoff,))
        return [(seq, kind, "max_age") for seq, kind in old]

    def _drop_oldest(self, conn: sqlite3.Connection, count: int) -> list[tuple[int, str, str]]:
        # Oldest OK first: an OK verdict lost costs a record in MES, a lost NG or ERROR can let a
        # bad part through, so those go only when no OK verdict is left to drop.
        victims = conn.execute(
            "SELECT seq, kind FROM verdicts WHERE kind = 'OK' ORDER BY seq LIMIT ?", (count,)
        ).fetchall()
        if len(victims) < count:
            victims += conn.execute(
                f"SELECT seq, {_KIND} FROM verdicts WHERE kind != 'OK' ORDER BY seq LIMIT ?",
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
