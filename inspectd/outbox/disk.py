"""The outbox's file and what it does when the disk fails: opening it, appending and
acknowledging on disk, the WAL, quarantine bookkeeping, drops, and verdicts that get no seq.
``OutboxFile`` holds the state; ``inspectd.outbox.store.Outbox`` is the API on top (every
method here is called with its lock held)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from inspectd.clock import Clock
from inspectd.contract.verdict import Verdict, iso_utc
from inspectd.outbox import queries
from inspectd.outbox.drops import Dropped, count_drops, drop_for_age, drop_oldest, note_drops
from inspectd.outbox.memory_rows import MemoryRows
from inspectd.outbox.rows import OutboxError, Row, Stored
from inspectd.outbox.schema import (
    KINDS,
    SEQ_RESERVE,
    count_quarantined,
    open_database,
    set_meta,
    transaction,
)
from inspectd.outbox.wal import Checkpointer

log = structlog.get_logger("inspectd.outbox")

Now = tuple[float, float]  # (wall, monotonic)


class OutboxFile:
    """The outbox's state and its disk side; methods here expect the caller to hold ``_lock``."""

    seq_reserve = SEQ_RESERVE  # a class attribute: tests make it small

    def __init__(
        self,
        path: Path,
        sync: str,
        max_rows: int,
        max_age_s: float,
        clock: Clock,
        start_after: int,
    ) -> None:
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
        self._quarantined = 0  # rows on disk set aside (see the package docstring)
        self._quarantine_last: str | None = None  # the latest: "seq N: why"
        self._last_seq = self._reserved = self._inherited_seq = start_after
        self._dropped = dict.fromkeys(KINDS, 0)
        self._dropped_at_open = 0

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

    def _open(self, start_after: int) -> sqlite3.Connection:
        opened = open_database(self.path, self.sync, self.clock, start_after, self.seq_reserve)
        self._depth, self._quarantined = opened.depth, opened.quarantined
        self._last_seq, self._reserved = opened.last_seq, opened.last_seq + self.seq_reserve
        self._inherited_seq = opened.max_row_seq  # rows up to here: an earlier process's
        self._dropped = opened.dropped
        log.info(
            "outbox.opened",
            path=str(self.path),
            depth=self._depth,
            last_seq=self._last_seq,
            start_after=start_after or None,
            rebased=opened.rebased or None,
            quarantined=self._quarantined or None,
        )
        return opened.conn

    def _append_with_retry(
        self,
        built: list[tuple[int, Verdict, list[Stored]]],
        now: Now,
        receipts: Sequence[str | None],
    ) -> bool:
        """A write the disk refused is tried once more if a TRUNCATE checkpoint frees the WAL's
        space (a full disk that only the WAL filled)."""
        if self._append_to_disk(built, now, receipts):
            return True
        return self._checkpoint() and self._append_to_disk(built, now, receipts)

    def _check_open(self) -> sqlite3.Connection | None:
        if self._closed:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._conn

    def _append_to_disk(
        self,
        built: list[tuple[int, Verdict, list[Stored]]],
        now: Now,
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
                if last > self._reserved - self.seq_reserve // 2:
                    reserved = max(last, self._reserved) + self.seq_reserve
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
        if self._conn is not None and self._checkpointer is not None:
            self._checkpointer.bound(self._conn)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it; False if it could not."""
        if self._conn is None or self._checkpointer is None:
            return False
        return self._checkpointer.truncate(self._conn)

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
