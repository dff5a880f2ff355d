"""GET /api/v1/jobs/<id> for every kind of job (backup, verify, drill), and job state in Redis that the API
cannot read."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable

import pytest

from common.queue import enqueue_drill, enqueue_or_join, job_queue, release_pending
from harness.in_process import Service
from harness.report import Report


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

    drill = enqueue_drill(job_queue(service.connection))
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


def _b64_json(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


NESTED_2000 = "[" * 2000 + "]" * 2000
"""JSON nested deeper than Python's recursion limit: json.loads raises RecursionError, not ValueError."""


# Values planted in a job's hash (rq:job:<id>) or its latest result (the stream rq:results:<id>), each
# unreadable by RQ or by the API in its own way.
HASH_PLANTS: dict[str, dict[str, str]] = {
    "status": {"status": "bogus"},
    "created_at": {"created_at": "zzz"},
    "enqueued_at": {"enqueued_at": "zzz"},
    "started_at": {"started_at": "2026-13-45T99:00:00.000000Z"},
    "ended_at": {"ended_at": "zzz"},
    "last_heartbeat": {"last_heartbeat": "zzz"},
    "timeout": {"timeout": "an hour"},
    "result_ttl": {"result_ttl": "x"},
    "failure_ttl": {"failure_ttl": "x"},
    "ttl": {"ttl": "x"},
    "dependency_ids": {"dependency_ids": "[unclosed"},
    "retries_left": {"retries_left": "x"},
    "data-not-json": {"data": "not json"},
    # A function name that is no string: never imported, never even compared as one of ours.
    "data-func-not-a-string": {"data": '[["json.tool.main"], null, [], {}]'},
    "meta-not-json": {"meta": "{not json", "status": "failed"},
    "meta-not-a-mapping": {"meta": "[1]", "status": "failed"},
    "meta-nested-2000-deep": {"meta": NESTED_2000, "status": "failed"},
}
RESULT_PLANTS: dict[str, dict[str, str]] = {
    "result-type": {"type": "9"},
    "result-without-type": {"return_value": _b64_json({})},
    "result-return_value-not-base64": {"type": "1", "return_value": "!!!"},
    "result-return_value-a-list": {"type": "1", "return_value": _b64_json(["snapshot"])},
    "result-return_value-nested-2000-deep": {"type": "1",
                                             "return_value": base64.b64encode(NESTED_2000.encode()).decode()},
    "result-exc_string-not-zlib": {"type": "2", "exc_string": _b64_json("x")},
    "result-execution_started_at": {"type": "1", "return_value": _b64_json({}), "execution_started_at": "zzz"},
}


@pytest.mark.parametrize("plant", [*HASH_PLANTS, *RESULT_PLANTS])
def test_an_unreadable_job_is_one_json_error_not_the_api(make_service: Callable[..., Service], plant: str,
                                                         caplog: pytest.LogCaptureFixture, report: Report) -> None:
    service = make_service(worker=False, backup_timeout="1s")
    job = enqueue_or_join(job_queue(service.connection))
    if plant in HASH_PLANTS:
        service.connection.hset(f"rq:job:{job.id}", mapping=HASH_PLANTS[plant])  # type: ignore[arg-type]
    else:  # a result comes once a job has started: no POST joins it any more
        release_pending(service.connection, job.id)
        service.connection.xadd(f"rq:results:{job.id}", RESULT_PLANTS[plant])  # type: ignore[arg-type]
    assert "json.tool" not in sys.modules

    answer = service.client.get(f"/api/v1/jobs/{job.id}")
    message = answer.get_json()["message"]
    if plant == "data-func-not-a-string":  # no job of ours, as any function but our three
        assert (answer.status_code, message) == (404, f"no job {job.id}")
    else:
        assert answer.status_code == 500, message
        assert message.startswith(f"job {job.id} has unreadable state in Redis: "), message
        assert any(job.id in record.getMessage() and "unreadable" in record.getMessage() for record in caplog.records)
    assert "json.tool" not in sys.modules  # nothing that a job hash names was imported

    # The rest of the API is untouched; a POST queues a new job rather than join the unreadable one.
    assert service.client.get("/api/v1/backup").status_code == 200
    post = service.client.post("/api/v1/backup")
    assert post.status_code == 202 and post.get_json()["job"] != job.id, post.get_json()
    assert service.client.get(post.headers["Location"]).get_json()["status"] == "queued"
    where = "rq:job:<id>" if plant in HASH_PLANTS else "its latest result in rq:results:<id>"
    planted = HASH_PLANTS.get(plant) or RESULT_PLANTS[plant]
    report(f"a queued backup job with {planted} planted in {where}",
           f"GET /api/v1/jobs/<id>: {answer.status_code} \"{message.replace(job.id, '<id>')[:160]}\"; other "
           f"requests unaffected (a POST queued a new job: {post.status_code}); nothing imported")


def test_a_verify_that_outlives_the_heartbeat_ttl_is_not_taken_for_lost(
        make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch, report: Report) -> None:
    """Only backups kept a heartbeat once: a verify (or drill) running longer than its TTL was answered
    500 "the worker was lost" while the worker was still checking."""
    import api.outcomes
    import worker.jobs
    import worker.leases

    ttl = 1.0
    monkeypatch.setattr(api.outcomes, "HEARTBEAT_TTL", ttl)
    monkeypatch.setattr(worker.leases, "HEARTBEAT_TTL", ttl)
    real_verify = worker.jobs.verify_stored

    def slow_verify(*args: object, **kwargs: object) -> object:
        time.sleep(4 * ttl)
        return real_verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.jobs, "verify_stored", slow_verify)
    service = make_service(backup_timeout="20s")
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    began = time.monotonic()
    verify = service.client.post(f"/api/v1/backup/{name}/verify")
    took = time.monotonic() - began
    assert verify.status_code == 200, verify.get_json()
    assert verify.get_json()["message"] == "backup verified" and took >= 4 * ttl
    report(f"a verify job that runs {took:.1f} s, four times the worker heartbeat's TTL ({ttl:g} s, shortened)",
           f"POST verify answered {verify.status_code} \"{verify.get_json()['message']}\", not a lost worker")
