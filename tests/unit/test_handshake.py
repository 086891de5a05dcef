"""The handshake core (inspectd.plc.handshake) on its own: one answer per request, by the
deadline, late = NG with the verdict flagged late, not_ready while the station starts, its
camera is offline or a product switches, not_inspected at stop. The pipeline's part is played
by hand: take the request off the queue, settle its record, hand it to the sink."""

from __future__ import annotations

import threading
import time

from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.inspection import Inspection
from inspectd.plc.handshake import Handshake, Result


class Answers:
    def __init__(self) -> None:
        self.got: list[tuple[float, Result]] = []
        self.cv = threading.Condition()

    def __call__(self, result: Result) -> None:
        with self.cv:
            self.got.append((time.monotonic(), result))
            self.cv.notify_all()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[Result]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.got) >= n, timeout), self.got
            return [r for _, r in self.got]


def record_for(request_id: str, part_id: str, verdict: Verdict = Verdict.OK) -> VerdictRecord:
    now = time.time()
    return VerdictRecord(
        station="cam1",
        product="button",
        part_id=part_id,
        verdict=verdict,
        score=0.1,
        threshold=0.2,
        model_name="ae",
        model_sha256="0" * 64,
        model_version=1,
        camera_serial="folder",
        frame_id=1,
        t_capture=now,
        t_verdict=now,
        latency_ms=1.0,
        request_id=request_id,
    )


def finish(core: Handshake, record: VerdictRecord, seq: int) -> None:
    """What the pipeline's publish thread does: settle, record (the seq), hand to the sinks."""
    core.settle([record])
    record.seq = seq
    core.handle(Inspection(record, frame=None))  # type: ignore[arg-type]


def test_a_verdict_decided_in_time_is_the_one_answer_with_its_seq() -> None:
    core, answers = Handshake(), Answers()
    assert core.submit("r1", "p1", time.monotonic() + 5.0, answers) is None
    assert core.queue.get_nowait().part_id == "p1"
    record = record_for("r1", "p1")
    finish(core, record, seq=7)
    [result] = answers.wait()
    assert (result.status, result.verdict, result.seq, result.code) == ("done", Verdict.OK, 7, None)
    assert record.late is False
    time.sleep(0.05)
    assert len(answers.got) == 1
    core.close()


def test_no_verdict_by_the_deadline_is_answered_ng_late_and_the_verdict_is_flagged_late() -> None:
    core, answers = Handshake(), Answers()
    t0 = time.monotonic()
    core.submit("r1", "p1", t0 + 0.1, answers)
    [late] = answers.wait()
    t_answer = answers.got[0][0]
    assert late.status == "late" and late.verdict == Verdict.NG and late.code == "late"
    assert late.record is None and late.part_id == "p1"
    assert 0.1 <= t_answer - t0 < 1.0  # at the deadline, not at the verdict
    record = record_for("r1", "p1", Verdict.OK)
    finish(core, record, seq=8)
    assert record.late is True  # published flagged late
    time.sleep(0.05)
    assert len(answers.got) == 1  # and not answered twice
    assert core.stats()["late"] == 1 and core.stats()["pending"] == 0
    core.close()


def test_a_verdict_settled_after_the_deadline_is_late_even_before_the_timer_fires() -> None:
    """Late or not is the clock at settle time, not who wins a race with the timer thread."""
    core, answers = Handshake(), Answers()
    core.submit("r1", "p1", time.monotonic() - 0.001, answers)  # already past
    record = record_for("r1", "p1")
    finish(core, record, seq=1)
    results = answers.wait()
    assert record.late is True
    time.sleep(0.05)
    assert [r.status for r in results] == ["late"] and len(answers.got) == 1
    core.close()


def test_triggers_during_a_product_switch_are_refused_not_ready_at_once() -> None:
    core, answers = Handshake(), Answers()
    with core.changeover("other"):
        refusal = core.submit("r1", "p1", None, answers)
        assert refusal is not None and refusal.code == "not_ready" and "other" in refusal.text
    assert core.queue.empty() and not answers.got
    assert core.submit("r2", "p2", None, answers) is None
    core.close()


def test_a_starting_station_and_an_offline_camera_are_refused_not_ready_at_once() -> None:
    core, answers = Handshake(starting="loading the engine for button"), Answers()
    refusal = core.submit("r1", "p1", None, answers)
    assert refusal is not None and refusal.code == "not_ready"
    assert refusal.text == "the station is starting: loading the engine for button"
    camera: list[str | None] = ["camera_offline: the camera process was killed by SIGKILL"]
    core.started(offline=lambda: camera[0])  # what CaptureSource.offline() says
    refusal = core.submit("r2", "p2", None, answers)
    assert refusal is not None and (refusal.code, refusal.text) == ("not_ready", camera[0])
    assert core.queue.empty() and not answers.got and core.stats()["pending"] == 0
    camera[0] = None  # back online
    assert core.submit("r3", "p3", None, answers) is None and core.queue.qsize() == 1
    core.close()


def test_a_full_queue_refuses_overloaded_and_keeps_nothing() -> None:
    core, answers = Handshake(queue_size=1), Answers()
    assert core.submit("r1", "p1", None, answers) is None
    refusal = core.submit("r2", "p2", None, answers)
    assert refusal is not None and refusal.code == "overloaded"
    assert core.stats()["pending"] == 1
    core.close()


def test_requests_never_inspected_are_answered_not_inspected_at_stop() -> None:
    core, answers = Handshake(), Answers()
    core.submit("r1", "p1", None, answers)
    core.close()
    [result] = answers.wait()
    assert result.status == "not_inspected" and result.verdict == Verdict.ERROR
    refusal = core.submit("r2", "p2", None, answers)
    assert refusal is not None and refusal.code == "not_ready"
