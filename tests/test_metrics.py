"""GET /metrics: backup-dir facts on each scrape, outcome counters from Redis, whichever process made them."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from prometheus_client.parser import text_string_to_metric_families

from common.config import load_config
from common.metadata import read_metadata
from tests.conftest import ConfigFactory, Service


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
    failing = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "1s"})
    assert failing.client.post("/api/v1/backup").status_code == 500
    metadata = read_metadata(service.config.backup_dir, name)
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
