"""The thread watch (issue 31): a watched thread that ends while the station runs is dead, with
the seconds since that was first seen; once the station stops, threads end on purpose."""

from __future__ import annotations

import threading

from inspectd.contract.topics import Topics
from inspectd.mqtt.commands import CommandDesk
from inspectd.outputs.sinks import Pictures
from inspectd.service.threads import Threaded, ThreadWatch


class Component:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.worker = threading.Thread(target=self.release.wait, name="worker", daemon=True)
        self.worker.start()

    def threads(self) -> dict[str, threading.Thread | None]:
        return {"worker": self.worker, "not-started": None}


def test_a_thread_that_ends_is_dead_until_the_station_stops() -> None:
    component = Component()
    assert isinstance(component, Threaded)
    watch = ThreadWatch()
    watch.watch(component)
    watch.watch(None)  # a component the config turned off
    assert watch.names() == ["worker"]
    assert watch.dead() == {} and watch.problems() == []

    component.release.set()
    component.worker.join(5)
    assert list(watch.dead()) == ["worker"]
    (problem,) = watch.problems()
    assert problem.startswith("thread_dead: the worker thread ended")

    watch.stopping()
    assert watch.dead() == {} and watch.problems() == []


def test_the_stations_worker_threads_are_watchable() -> None:
    """The command desk and the picture writer name their threads (issue 31: they were not
    watched): one that ends while the station runs shows as dead."""
    desk = CommandDesk(None, Topics("inspectd/v1/s/l/st1"), {}, max_bytes=1024)  # type: ignore[arg-type]
    pictures = Pictures([])
    watch = ThreadWatch()
    for component in (desk, pictures):
        assert isinstance(component, Threaded)
        watch.watch(component)
    assert watch.names() == ["commands", "pictures"] and watch.dead() == {}
    desk.close()
    pictures.close()
    assert sorted(watch.dead()) == ["commands", "pictures"]
