"""Scheduled backups: RQ's cron scheduler, with a tick of our own (scheduler/cron.py)."""
