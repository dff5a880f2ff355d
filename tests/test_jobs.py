"""GET /api/v1/jobs/<id> for every kind of job (backup, verify, drill), and job state in Redis that the API
cannot read."""

from __future__ import annotations

import time
from collections.abc import Callable

from common.queue import backup_queue, enqueue_drill
from tests.conftest import Report, Service


def wait_for_status(service: Service, location: str, status: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while (body := service.client.get(location).get_json()).get("status") != status:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    answer: dict[str, object] = body
    return answer


def test_every_kind_of_job_is_at_the_location_its_202_gives(make_service: Callable[..., Service],
                                                            report: Report) -> None:
    """A verify's 202 points at its job, which names its kind, and a drill's job (queued by a scheduler
    tick) is found at /api/v1/jobs/<id> too."""
    service = make_service(worker=False, backup_timeout="1s")
    backup = service.client.post("/api/v1/backup")  # no worker yet: 202, queued
    assert backup.status_code == 202 and backup.get_json()["message"] == "backup queued"
    service.start_worker()
    wait_for_status(service, backup.headers["Location"], "finished")
    service.stop_worker()  # the verify and the drill stay queued

    name = service.client.get("/api/v1/backup").get_json()[0]
    verify = service.client.post(f"/api/v1/backup/{name}/verify")
    assert verify.status_code == 202
    assert verify.get_json()["message"] == "verify queued"
    location = verify.headers["Location"]
    assert location == f"/api/v1/jobs/{verify.get_json()['job']}"
    queued = service.client.get(location)
    assert queued.status_code == 200, queued.get_json()
    assert queued.get_json()["status"] == "queued" and queued.get_json()["message"] == "verify queued"

    drill = enqueue_drill(backup_queue(service.connection))
    drill_answer = service.client.get(f"/api/v1/jobs/{drill.id}")
    assert drill_answer.status_code == 200, drill_answer.get_json()
    assert drill_answer.get_json()["message"] == "drill queued"
    drill.cancel()  # type: ignore[no-untyped-call]  # a drill needs minutes; its answer while queued is the point

    service.start_worker()
    verified = wait_for_status(service, location, "finished")
    assert verified["message"] == "backup verified" and verified["filename"] == name
    report("a verify (and a drill) job that outlives the POST's wait: GET the Location of its 202",
           f"verify: 202 \"{verify.get_json()['message']}\", its Location answered {queued.status_code} "
           f"({queued.get_json()['status']}), then \"{verified['message']}\"; drill: "
           f"{drill_answer.status_code} \"{drill_answer.get_json()['message']}\"")
