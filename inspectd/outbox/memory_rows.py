"""Verdicts the disk could not take, kept in memory (not durable) until the broker acknowledges
them; bounded like the file (``drops.drop_in_memory``). Their payloads say ``"durable": false``.
Used under the outbox's lock."""

from __future__ import annotations

from dataclasses import replace

from inspectd.contract.messages import set_flags
from inspectd.contract.verdict import Verdict
from inspectd.outbox.drops import Dropped, drop_in_memory
from inspectd.outbox.rows import Row, Stored, message_of


class MemoryRows:
    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows: dict[int, Row] = {}  # by seq

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        built: list[tuple[int, Verdict, list[Stored]]],
        now: tuple[float, float],
        cutoff: float,
    ) -> Dropped:
        """Keep the verdicts that have messages, dropping (age ``cutoff``, then the oldest OK)
        to stay within ``max_rows``; returns what was dropped."""
        dropped: Dropped = []
        for seq, kind, msgs in built:
            if not msgs:
                continue
            if len(self.rows) >= self.max_rows:
                dropped += drop_in_memory(self.rows, len(self.rows) - self.max_rows + 1, cutoff)
            stored = {
                i: message_of((t, set_flags(p, durable=False), q, r, c, e, em))
                for i, (t, p, q, r, c, e, em) in enumerate(msgs)
            }
            self.rows[seq] = Row(
                seq, kind, now[0], False, stored, durable=False, created_mono=now[1]
            )
        return dropped

    def ack(self, seq: int, idx: int | None) -> int | None:
        """Messages deleted for this acknowledgement; None when ``seq`` is not kept here."""
        row = self.rows.get(seq)
        if row is None:
            return None
        kept = {i: m for i, m in row.messages.items() if idx is not None and i != idx}
        if kept:
            self.rows[seq] = replace(row, messages=kept)
        else:
            del self.rows[seq]
        return len(row.messages) - len(kept)

    def pending(self, after: int) -> list[Row]:
        return [r for s, r in self.rows.items() if s > after and not r.quarantined]

    def quarantined(self) -> list[Row]:
        return [r for r in self.rows.values() if r.quarantined]

    def quarantine(self, seq: int, reason: str) -> bool:
        """Set ``seq`` aside if it is kept here; False otherwise."""
        row = self.rows.get(seq)
        if row is None:
            return False
        self.rows[seq] = replace(row, quarantined=reason)
        return True

    def oldest_mono(self) -> float | None:
        return min(
            (r.created_mono for r in self.rows.values() if r.created_mono is not None), default=None
        )
