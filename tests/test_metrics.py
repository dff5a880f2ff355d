"""GET /metrics: backup-dir facts on each scrape, outcome counters from Redis, whichever process made them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from common.config import load_config
from common.metrics import DRILL_KEY, DURATION_KEY, OUTCOMES_KEY, record_drill
from common.queue import QUEUE_NAME
from common.storage import LocalStore
from harness.in_process import ConfigFactory, Service
from harness.report import Report


def scrape(service: Service) -> dict[str, float]:
    response = service.client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_after_a_success_and_a_failure(make_service: Callable[..., Service]) -> None:
    service = make_service()
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    # A job runs with the config of the worker that takes it: only the failing service's may take the next.
    service.stop_worker()
    failing = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "1s"})
    assert failing.client.post("/api/v1/backup").status_code == 500
    metadata = LocalStore(service.config.backup_dir).read_metadata(name)
    assert metadata is not None
    # The failing service's worker wrote to the same Redis: its failure shows on the other API's scrape.
    samples = scrape(service)
    assert samples['etcd_backup_backups_total{outcome="success"}'] == 1
    assert samples['etcd_backup_backups_total{outcome="failure"}'] == 1
    assert samples['etcd_backup_backups_total{outcome="skipped"}'] == 0
    assert samples["etcd_backup_duration_seconds_count"] == 1
    assert samples['etcd_backup_duration_seconds_bucket{le="+Inf"}'] == 1
    assert abs(samples["etcd_backup_duration_seconds_sum"] - metadata.duration) < 0.01
    assert samples["etcd_backup_backups_on_disk"] == 1
    assert samples["etcd_backup_backups_on_disk_bytes"] == metadata.filesize
    assert samples["etcd_backup_last_size_bytes"] == metadata.filesize
    assert samples["etcd_backup_last_revision"] == metadata.revision
    assert abs(samples["etcd_backup_last_success_timestamp_seconds"] - time.time()) < 30
    assert samples["etcd_backup_queue_depth"] == 0
    assert samples["etcd_backup_failed_jobs"] == 1
    assert samples["etcd_backup_redis_up"] == 1


def test_metrics_without_redis_still_tell_what_is_on_disk(service: Service, write_config: ConfigFactory) -> None:
    service.client.post("/api/v1/backup")
    config = load_config(write_config())
    cut_off = Service(config, redis.Redis.from_url("redis://127.0.0.1:1"))
    samples = scrape(cut_off)
    assert samples["etcd_backup_redis_up"] == 0
    assert samples["etcd_backup_backups_on_disk"] == 1
    assert "etcd_backup_last_success_timestamp_seconds" in samples


def test_the_success_gauge_is_when_the_backup_was_complete(make_service: Callable[..., Service]) -> None:
    """started + duration is the moment the backup was complete: never after the POST answered (a gauge
    capped at "now" would move from scrape to scrape), even for a backup that waited for the next
    second's name."""
    service = make_service()
    for _ in range(2):  # the second is within the first's second: it waits for a name of its own
        name = service.client.post("/api/v1/backup").get_json()["filename"]
        answered = time.time()
        metadata = LocalStore(service.config.backup_dir).read_metadata(name)
        assert metadata is not None
        complete = datetime.fromisoformat(metadata.started).timestamp() + metadata.duration
        assert complete <= answered, (complete - answered, metadata)
        assert scrape(service)["etcd_backup_last_success_timestamp_seconds"] == pytest.approx(complete, abs=1e-6)


def _plant_hash(key: str, field: bytes | str, value: str) -> Callable[[redis.Redis], object]:
    return lambda connection: connection.hset(key, field, value)


def _plant_string(key: str) -> Callable[[redis.Redis], object]:
    def plant(connection: redis.Redis) -> None:
        connection.delete(key)
        connection.set(key, "not what RQ or a worker writes there")

    return plant


DURATION = "etcd_backup_duration_seconds"
# What is planted in Redis, and the samples it may cost (every other sample of the scrape stays as it was).
BAD_VALUES: dict[str, tuple[Callable[[redis.Redis], object], set[str]]] = {
    "outcome-not-an-int": (_plant_hash(OUTCOMES_KEY, "success", "notanint"),
                           {'etcd_backup_backups_total{outcome="success"}'}),
    "outcome-negative": (_plant_hash(OUTCOMES_KEY, "failure", "-3"), {'etcd_backup_backups_total{outcome="failure"}'}),
    "outcome-unknown": (_plant_hash(OUTCOMES_KEY, "evil\n# HELP", "1"), set()),
    "outcome-field-not-utf8": (_plant_hash(OUTCOMES_KEY, b"\xff\xfe", "1"), set()),
    "outcomes-not-a-hash": (_plant_string(OUTCOMES_KEY), {"etcd_backup_backups_total{"}),
    "duration-bucket": (_plant_hash(DURATION_KEY, "1.0", "zzz"), {DURATION}),
    "duration-sum": (_plant_hash(DURATION_KEY, "sum", "nan"), {DURATION}),
    "duration-not-a-hash": (_plant_string(DURATION_KEY), {DURATION}),
    "drill-time": (_plant_hash(DRILL_KEY, "time", "zzz"), {"etcd_backup_last_drill_timestamp_seconds"}),
    "drill-outcome": (_plant_hash(DRILL_KEY, "outcome", "zzz"), {"etcd_backup_last_drill_passed"}),
    "drill-last-success": (_plant_hash(DRILL_KEY, "last_success", "inf"),
                           {"etcd_backup_last_drill_success_timestamp_seconds"}),
    "drill-not-a-hash": (_plant_string(DRILL_KEY), {"etcd_backup_last_drill"}),
    "queue-not-a-list": (_plant_string(f"rq:queue:{QUEUE_NAME}"), {"etcd_backup_queue_depth"}),
    "failed-registry-not-a-sorted-set": (_plant_string(f"rq:failed:{QUEUE_NAME}"), {"etcd_backup_failed_jobs"}),
}


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_a_bad_value_in_redis_costs_one_metric_not_the_scrape(make_service: Callable[..., Service], bad: str,
                                                              caplog: pytest.LogCaptureFixture,
                                                              report: Report) -> None:
    service = make_service()
    assert service.client.post("/api/v1/backup").status_code == 200
    record_drill(service.connection, time.time(), "snapshot-x", True, "a drill that passed")
    before = scrape(service)
    plant, may_go = BAD_VALUES[bad]
    plant(service.connection)

    after = scrape(service)  # 200, in Prometheus' text format
    gone = {name for name in before if name not in after}
    if may_go:
        assert gone and all(any(name.startswith(prefix) for prefix in may_go) for name in gone), gone
    else:
        assert not gone, gone
    moving = {"etcd_backup_redis_used_memory_bytes"}  # what the planted value itself takes in Redis
    assert {name: value for name, value in after.items() if name in before and name not in moving} == {
        name: value for name, value in before.items() if name not in gone | moving}
    assert not any("evil" in name or "\ufffd" in name for name in after)  # no series made up from Redis
    assert after["etcd_backup_redis_up"] == 1 and after["etcd_backup_backups_on_disk"] == 1
    logged = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert logged, "no log line says what was skipped"
    report(f"/metrics with a bad value planted in Redis: {bad}",
           f"200; {len(gone)} of {len(before)} samples left out ({', '.join(sorted(gone)) or 'none'}); the rest "
           f"unchanged; logged: \"{logged[0][:150]}\"")
