"""Keeping the outbox bounded: what is dropped when it is full or too old, counted in ``meta``
(persisted, in the same transaction as the deletes) and logged. OK verdicts go first; NG and
ERROR only when no OK is left, since losing one can let a bad part through."""

from __future__ import annotations

import sqlite3

import structlog

from inspectd.contract.verdict import Verdict
from inspectd.outbox.rows import Row
from inspectd.outbox.schema import KIND_SQL, KINDS, meta, set_meta

log = structlog.get_logger("inspectd.outbox")

NOT_STORABLE = "not_storable"  # drop reason: a verdict whose messages could not be built
_SEQS_LOGGED_FOR_OK = 20  # OK drops log a count and the first seqs; NG/ERROR drops log all seqs

Dropped = list[tuple[int, str, str]]  # (seq, kind, reason)


def drop_for_age(conn: sqlite3.Connection, cutoff: float) -> Dropped:
    # Age applies to every kind: a verdict older than max_age_s is of no use to a PLC and
    # MES has to reconcile it from the log anyway. It is still counted and logged. On the
    # monotonic clock: a wall clock stepped forward must not age young rows.
    old = conn.execute(
        f"SELECT seq, {KIND_SQL} FROM verdicts WHERE created_mono < ? ORDER BY seq", (cutoff,)
    ).fetchall()
    if old:
        conn.execute("DELETE FROM verdicts WHERE created_mono < ?", (cutoff,))
    return [(seq, kind, "max_age") for seq, kind in old]


def drop_oldest(conn: sqlite3.Connection, count: int) -> Dropped:
    # Oldest OK first: an OK verdict lost costs a record in MES, a lost NG or ERROR can let a
    # bad part through, so those go only when no OK verdict is left to drop.
    victims = conn.execute(
        "SELECT seq, kind FROM verdicts WHERE kind = 'OK' ORDER BY seq LIMIT ?", (count,)
    ).fetchall()
    if len(victims) < count:
        victims += conn.execute(
            f"SELECT seq, {KIND_SQL} FROM verdicts WHERE kind != 'OK' ORDER BY seq LIMIT ?",
            (count - len(victims),),
        ).fetchall()
    conn.executemany("DELETE FROM verdicts WHERE seq = ?", [(seq,) for seq, _ in victims])
    return [(seq, kind, "max_rows") for seq, kind in victims]


def count_drops(conn: sqlite3.Connection, dropped: Dropped) -> None:
    # persisted in the same transaction as the deletes: no drop goes uncounted
    for kind in KINDS:
        n = sum(1 for _, k, _ in dropped if k == kind)
        if n:
            set_meta(conn, f"dropped_{kind}", meta(conn, f"dropped_{kind}") + n)


def drop_in_memory(rows: dict[int, Row], count: int, cutoff: float) -> Dropped:
    """The same for verdicts kept in memory (``rows``, changed in place): age first, then the
    oldest OK, then the oldest NG/ERROR."""
    dropped = [
        (s, r.kind.value, "max_age")
        for s, r in rows.items()
        if r.created_mono is not None and r.created_mono < cutoff
    ]
    for seq, _, _ in dropped:
        del rows[seq]
    count -= len(dropped)
    if count > 0:
        order = sorted(rows.values(), key=lambda r: (r.kind != Verdict.OK, r.seq))
        for row in order[:count]:
            del rows[row.seq]
            dropped.append((row.seq, row.kind.value, "max_rows"))
    return dropped


def note_drops(dropped: Dropped, totals: dict[str, int], **fields: object) -> None:
    """After the commit: add them to ``totals`` (by kind) and log every drop with ``fields``."""
    groups: dict[tuple[str, str], list[int]] = {}
    for seq, kind, reason in dropped:
        groups.setdefault((kind, reason), []).append(seq)
    for (kind, reason), seqs in groups.items():
        totals[kind] += len(seqs)
        about = {"kind": kind, "reason": reason, "count": len(seqs), **fields}
        about["dropped_total"] = totals[kind]
        if kind == Verdict.OK:
            log.warning("outbox.dropped", seqs=seqs[:_SEQS_LOGGED_FOR_OK], **about)
        else:
            log.error("outbox.dropped", seqs=seqs, **about)
