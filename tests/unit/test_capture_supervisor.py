"""The camera child's restart backoff (inspectd.capture.supervisor), without processes."""

from __future__ import annotations

from inspectd.capture.supervisor import RestartBackoff, exit_reason


def test_the_backoff_doubles_per_wait_up_to_the_max_and_resets():
    backoff = RestartBackoff(0.5, 3.0)
    waits = []
    for _ in range(5):
        waits.append(backoff.wait_s)
        backoff.waited()
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.wait_s == 0.5


def test_a_max_below_the_start_is_the_start():
    backoff = RestartBackoff(2.0, 1.0)
    backoff.waited()
    assert backoff.wait_s == 2.0


def test_exit_reasons_name_the_signal():
    assert exit_reason(-9) == "was killed by SIGKILL"
    assert exit_reason(3) == "exited with code 3"
    assert exit_reason(None) == "is still running"
