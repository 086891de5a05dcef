"""The outbox's reads and writes, on a connection the caller holds (under its lock, inside
``schema.transaction`` where they write): what each SQL statement does lives here once."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from inspectd.contract.verdict import Verdict
from inspectd.outbox.rows import Row, Stored, key_blob, row_from
from inspectd.outbox.schema import ROWS_SQL

Built = list[tuple[int, Verdict, list[Stored]]]  # (seq, kind, checked messages) per verdict


def insert_verdicts(
    conn: sqlite3.Connection,
    built: Built,
    now: tuple[float, float],
    boot_id: str,
    receipts: Sequence[str | None] = (),
) -> None:
    """Store the verdicts that have messages, and ``receipts[i]`` with ``built[i]``."""
    wall, mono = now
    with_rows = [(seq, kind, msgs) for seq, kind, msgs in built if msgs]
    conn.executemany(
        "INSERT INTO verdicts (seq, kind, created, created_mono, boot_id) VALUES (?, ?, ?, ?, ?)",
        [(seq, kind.value, wall, mono, boot_id) for seq, kind, _ in with_rows],
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
                (key_blob(key), seq, kind.value)
                for (seq, kind, _), key in zip(built, receipts, strict=False)
                if key is not None
            ],
        )


def read_rows(
    conn: sqlite3.Connection, where: str, after: int, limit: int
) -> tuple[list[Row], dict[int, str], int | None]:
    """Up to ``limit`` verdicts with seq > ``after`` that ``where`` selects: (the rows read back,
    {seq: why} of those that could not be, the last seq looked at)."""
    lines = conn.execute(ROWS_SQL.format(where=f"seq > ? AND {where}"), (after, limit)).fetchall()
    rows: list[Row] = []
    bad: dict[int, str] = {}
    for seq, joined in itertools.groupby(lines, key=lambda line: line[0]):
        try:
            rows.append(row_from(list(joined)))
        except Exception as exc:  # whatever is wrong with it, it costs this row only
            bad[seq] = f"stored row cannot be sent: {type(exc).__name__}: {exc}"
    return rows, bad, lines[-1][0] if lines else None


def set_quarantined(conn: sqlite3.Connection, reasons: dict[int, str]) -> dict[int, str]:
    """Mark rows as set aside with why; returns those that were there."""
    return {
        seq: why
        for seq, why in reasons.items()
        if conn.execute("UPDATE verdicts SET quarantined = ? WHERE seq = ?", (why, seq)).rowcount
    }


def delete_acked(
    conn: sqlite3.Connection, acks: Iterable[tuple[int, int | None]]
) -> tuple[int, int]:
    """Delete acknowledged messages (all of a verdict's for idx None) and each verdict left with
    none: (messages deleted, verdicts deleted)."""
    changed = gone = 0
    for seq, idx in acks:
        if idx is None:
            changed += conn.execute("DELETE FROM messages WHERE seq = ?", (seq,)).rowcount
        else:
            changed += conn.execute(
                "DELETE FROM messages WHERE seq = ? AND idx = ?", (seq, idx)
            ).rowcount
        gone += conn.execute(
            "DELETE FROM verdicts WHERE seq = ? AND NOT EXISTS"
            " (SELECT 1 FROM messages WHERE seq = ?)",
            (seq, seq),
        ).rowcount
    return changed, gone


def mark_replayed(conn: sqlite3.Connection, through: int) -> int:
    """Flag rows up to seq ``through`` as left by an earlier process; returns how many."""
    return conn.execute(
        "UPDATE verdicts SET replayed = 1 WHERE seq <= ? AND replayed = 0", (through,)
    ).rowcount


def read_receipts(conn: sqlite3.Connection) -> list[tuple[str, int, Verdict]]:
    rows = conn.execute("SELECT key, seq, kind FROM receipts ORDER BY seq").fetchall()
    return [(bytes(k).decode("utf-8", "surrogateescape"), int(s), Verdict(v)) for k, s, v in rows]


def delete_receipts(conn: sqlite3.Connection, keys: Iterable[str]) -> None:
    conn.executemany("DELETE FROM receipts WHERE key = ?", [(key_blob(k),) for k in keys])


@contextmanager
def unsynced(conn: sqlite3.Connection, sync: str) -> Iterator[None]:
    """Writes that need no fsync of their own (acks, forgotten receipts: after a power cut one
    comes back and is harmless), then the outbox's own ``sync`` again."""
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        try:
            conn.execute(f"PRAGMA synchronous={sync.upper()}")
        except sqlite3.Error:
            pass
