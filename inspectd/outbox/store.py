"""The ``Outbox`` (the package docstring says what it promises): seq, appends, reading rows
back, acknowledgements, quarantine, receipts, and what it does when the disk fails."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from inspectd.clock import SYSTEM, Clock
from inspectd.contract.verdict import Verdict, iso_utc
from inspectd.outbox import queries
from inspectd.outbox.drops import (
    NOT_STORABLE,
    Dropped,
    count_drops,
    drop_for_age,
    drop_in_memory,
    drop_oldest,
    note_drops,
)
from inspectd.outbox.memory_rows import MemoryRows
from inspectd.outbox.rows import (
    MessagesArg,
    OutboxError,
    Row,
    Stored,
    checked,
)
from inspectd.outbox.schema import (
    KINDS,
    SCHEMA,
    SCHEMA_VERSION,
    add_columns,
    count_quarantined,
    meta,
    read_high_water,
    rebase_clocks,
    set_meta,
    transaction,
)
from inspectd.outbox.wal import WAL_LIMIT_BYTES, Checkpointer, wal_bytes

log = structlog.get_logger("inspectd.outbox")

DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
SYNC_MODES = ("full", "normal")
SEQ_RESERVE = 100_000  # numbers reserved ahead on disk; the most seq can jump after a crash
REOPEN_S = 1.0  # an outbox that could not be opened tries again at most this often

_Now = tuple[float, float]  # (wall, monotonic)


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
        self._checkpointer: Checkpointer | None = None
        self._closed = False
        self._memory = MemoryRows(max_rows)  # verdicts the disk could not take
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
            self._checkpointer = Checkpointer(self.path, self.sync)
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
        known = read_high_water(outbox.path) or 0
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
            set_meta(conn, "reserved_seq", last + SEQ_RESERVE)
            add_columns(conn)
            rebased = rebase_clocks(conn, self.clock)
            (self._depth,) = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()
            self._quarantined = count_quarantined(conn)
        self._last_seq = last
        self._reserved = last + SEQ_RESERVE
        self._inherited_seq = max_row_seq  # rows up to here were left by an earlier process
        self._dropped = {k: meta(conn, f"dropped_{k}") for k in KINDS}
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
            built: list[tuple[int, Verdict, list[Stored]]] = []
            failed: Dropped = []
            for offset, (kind, (_, messages)) in enumerate(zip(kinds, items, strict=True)):
                seq = first + offset
                try:
                    given = messages(seq) if callable(messages) else messages
                    stored = [checked(m) for m in given]
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
            # Spent from here on, whatever fails below: a seq is never handed out twice (those
            # past the reservation, below, are taken back: they reach no one).
            self._last_seq = built[-1][0]
            now = (self.clock.wall(), self.clock.mono())
            if self._conn is not None and self._append_with_retry(built, now, receipts):
                self._no_seq = None
            else:
                # In memory, only under the reservation on disk: past it a restart repeats seqs.
                built = [b for b in built if b[0] <= self._reserved]
                self._last_seq = max(first - 1, min(self._last_seq, self._reserved))
                self._note_drops(self._memory.add(built, now, now[1] - self.max_age_s))
            spent = {seq for seq, _, _ in built}
            failed = [f for f in failed if f[0] in spent]
            if failed:
                self._count_not_storable(failed)
            if len(spent) < len(items):
                self._refuse_seqs(len(items) - len(spent), now[0])
            return [seq if seq in spent else 0 for seq in range(first, first + len(items))]

    def _append_with_retry(
        self,
        built: list[tuple[int, Verdict, list[Stored]]],
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
            memory = self._memory.pending(after)
        if memory:
            rows = sorted(rows + memory, key=lambda r: r.seq)[:limit]
        return rows

    def quarantined_rows(self, limit: int = 100) -> list[Row]:
        """Up to ``limit`` quarantined verdicts that can be read back now, in seq order, for
        another try (one the broker refused may be taken now); ``Row.quarantined`` says why."""
        with self._lock:
            self._check_open()
            rows = self._valid_rows("quarantined IS NOT NULL", 0, limit, set_aside=False)
            memory = self._memory.quarantined()
        if memory:
            rows = sorted(rows + memory, key=lambda r: r.seq)[:limit]
        return rows

    def quarantine(self, seq: int, reason: str) -> None:
        """Set verdict ``seq`` aside (see the module docstring): it stays, counted, and is no
        longer ``pending()``. Unknown seqs are ignored (acknowledged or dropped meanwhile)."""
        with self._lock:
            self._check_open()
            if self._memory.quarantine(seq, reason):
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
                deleted = self._memory.ack(seq, idx)
                if deleted is None:
                    on_disk.append((seq, idx))
                else:
                    changed += deleted
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
                with transaction(conn):
                    count = queries.mark_replayed(conn, self._inherited_seq)
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
            dropped = drop_in_memory(self._memory.rows, 0, now[1] - self.max_age_s)
            if conn is not None:
                self._retry_acks()  # an idle line: nothing else would
                try:
                    with transaction(conn):
                        on_disk = drop_for_age(conn, now[1] - self.max_age_s)
                        count_drops(conn, on_disk)
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
                return queries.read_receipts(conn)
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc

    def forget_receipts(self, keys: Iterable[str]) -> None:
        """Delete receipts the source no longer needs. Not synced on its own, like an ack: a
        receipt that comes back after a power cut only names a file that is gone."""
        keys = list(keys)
        with self._lock:
            conn = self._check_open()
            if conn is None or not keys:
                return
            try:
                with queries.unsynced(conn, self.sync), transaction(conn):
                    queries.delete_receipts(conn, keys)
            except sqlite3.Error as exc:
                log.warning(
                    "outbox.receipts_not_forgotten",
                    path=str(self.path),
                    count=len(keys),
                    error=str(exc),
                )

    def stats(self) -> dict[str, Any]:
        """For health/stats: depth (verdicts held, in memory and quarantined ones included),
        in_memory, quarantined, oldest_age_s (None when empty), dropped by kind (since the file
        was created), last_seq, durable and the write error."""
        with self._lock:
            conn = self._check_open()
            oldest = self._memory.oldest_mono()
            if conn is not None:
                try:
                    (on_disk,) = conn.execute("SELECT MIN(created_mono) FROM verdicts").fetchone()
                except sqlite3.Error:
                    on_disk = None
                if on_disk is not None:
                    oldest = on_disk if oldest is None else min(oldest, on_disk)
            return {
                "depth": self._depth + len(self._memory),
                "in_memory": len(self._memory),
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
            if self._memory.rows:
                log.error(
                    "outbox.closed_with_memory_rows",
                    path=str(self.path),
                    seqs=sorted(self._memory.rows)[:50],
                    count=len(self._memory),
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
                    with transaction(conn):
                        set_meta(conn, "reserved_seq", self._last_seq)
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
        built: list[tuple[int, Verdict, list[Stored]]],
        now: _Now,
        receipts: Sequence[str | None] = (),
    ) -> bool:
        conn = self._conn
        assert conn is not None
        last = built[-1][0]
        with_rows = sum(1 for _, _, msgs in built if msgs)
        try:
            with transaction(conn):
                dropped = drop_for_age(conn, now[1] - self.max_age_s)
                depth = self._depth - len(dropped)
                excess = depth + with_rows - self.max_rows
                if excess > 0:
                    dropped += drop_oldest(conn, excess)
                count_drops(conn, dropped)
                queries.insert_verdicts(conn, built, now, self.clock.boot_id, receipts)
                reserved = self._reserved
                if last > self._reserved - SEQ_RESERVE // 2:
                    reserved = max(last, self._reserved) + SEQ_RESERVE
                    set_meta(conn, "reserved_seq", reserved)
        except Exception as exc:  # sqlite's errors, or a value it cannot bind
            self._disk_failed(f"store seq {built[0][0]}..{last}", exc)
            return False
        # committed: only now does the in-memory state move on
        self._reserved = reserved
        self._depth += with_rows - len(dropped)
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
            try:
                read, bad, last = queries.read_rows(self._conn, where, after, limit - len(rows))
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc
            rows += read
            if bad and set_aside:
                self._set_aside(bad)
            if not bad or last is None:
                break
            after = last
        return rows

    def _set_aside(self, reasons: dict[int, str]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            with transaction(conn):
                stored = queries.set_quarantined(conn, reasons)
                self._quarantined = count_quarantined(conn)
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
        return self._quarantined + len(self._memory.quarantined())

    def _recount_quarantined(self) -> None:
        """After rows were deleted: some may have been quarantined (only then is it read)."""
        if self._quarantined and self._conn is not None:
            try:
                self._quarantined = count_quarantined(self._conn)
            except sqlite3.Error:
                pass  # the next delete counts again

    def _ack_on_disk(self, acks: list[tuple[int, int | None]]) -> int:
        conn = self._conn
        assert conn is not None
        try:  # unsynced: see ack_many, an ack may be lost
            with queries.unsynced(conn, self.sync), transaction(conn):
                changed, gone = queries.delete_acked(conn, acks)
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
        self._depth -= gone
        if gone:
            self._recount_quarantined()
        self._bound_wal()
        return changed

    def _retry_acks(self) -> None:
        if self._acks_to_retry and self._conn is not None:
            acks, self._acks_to_retry = self._acks_to_retry, []
            self._ack_on_disk(acks)

    def _bound_wal(self) -> None:
        """After a commit: past the limit the checkpoint thread copies the WAL back; at twice
        the limit its passive checkpoints could not finish (writes without a pause), and this
        thread checkpoints itself."""
        size = wal_bytes(self.path)
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

    def _count_not_storable(self, failed: Dropped) -> None:
        """Counted as dropped, persisted where the disk allows: health shows it either way."""
        conn = self._conn
        if conn is not None:
            try:
                with transaction(conn):
                    count_drops(conn, failed)
            except sqlite3.Error as exc:
                self._disk_failed(f"count seqs {[s for s, _, _ in failed]} not stored", exc)
        self._note_drops(failed)

    def _note_drops(self, dropped: Dropped) -> None:
        note_drops(
            dropped,
            self._dropped,
            path=str(self.path),
            max_rows=self.max_rows,
            max_age_s=self.max_age_s,
        )
