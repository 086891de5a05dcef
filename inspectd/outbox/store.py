"""The ``Outbox`` (the package docstring says what it promises): seq, appends, reading rows
back, acknowledgements, quarantine, receipts, and what it does when the disk fails."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from inspectd.clock import SYSTEM, Clock
from inspectd.contract.verdict import Verdict
from inspectd.outbox import queries
from inspectd.outbox.disk import OutboxFile
from inspectd.outbox.drops import (
    NOT_STORABLE,
    Dropped,
    count_drops,
    drop_for_age,
    drop_in_memory,
)
from inspectd.outbox.rows import (
    MessagesArg,
    OutboxError,
    Row,
    Stored,
    checked,
)
from inspectd.outbox.schema import (
    read_high_water,
    set_meta,
    transaction,
)

log = structlog.get_logger("inspectd.outbox")

DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
SYNC_MODES = ("full", "normal")
REOPEN_S = 1.0  # an outbox that could not be opened tries again at most this often


class Outbox(OutboxFile):
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
        super().__init__(path, sync, max_rows, max_age_s, clock, start_after)
        if _open:
            self._connect(start_after)

    @classmethod
    def in_memory(cls, path: Path, reason: str, **bounds: Any) -> Outbox:
        """An outbox for a file that cannot be opened. It holds no seq reservation, so it gives
        verdicts no seq (see the package docstring) until an append finds the file can be opened
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
        a verdict that can be given no safe seq (none stored, see the package docstring).

        ``receipts[i]`` (if given and not None) is stored with item i in the same transaction
        (see ``receipts()``); kept in memory verdicts store none.

        Each item's messages are a list, or a callable ``seq -> messages`` for payloads that
        carry the seq (the verdict payload does); it runs under the lock, so keep it short. If
        one raises (or gives a message that cannot be stored), that verdict alone is not stored:
        its seq is used up all the same (never handed out twice), and it is counted and logged
        as dropped (reason ``not_storable``); the others are stored. No messages (MQTT off): the
        verdict only takes a seq. Makes room first when the outbox is at ``max_rows`` or holds rows
        older than ``max_age_s`` (dropping, see the package docstring). Never fails because the
        outbox is full or the disk refuses the write (see the package docstring)."""
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
        """Set verdict ``seq`` aside (see the package docstring): it stays, counted, and is no
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
