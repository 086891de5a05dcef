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

from inspectd.outbox.drops import NOT_STORABLE
from inspectd.outbox.rows import MessagesArg, OutboxError, Row
from inspectd.outbox.schema import KINDS, SCHEMA_VERSION, SEQ_RESERVE
from inspectd.outbox.store import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_ROWS,
    REOPEN_S,
    SYNC_MODES,
    Outbox,
)
from inspectd.outbox.wal import WAL_LIMIT_BYTES

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_ROWS",
    "KINDS",
    "NOT_STORABLE",
    "REOPEN_S",
    "SCHEMA_VERSION",
    "SEQ_RESERVE",
    "SYNC_MODES",
    "WAL_LIMIT_BYTES",
    "MessagesArg",
    "Outbox",
    "OutboxError",
    "Row",
]
