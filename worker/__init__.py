"""The backup worker: RQ jobs that snapshot etcd into the backup directory. Never imports `api`."""
