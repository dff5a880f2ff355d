"""The `etcd-backup` command: composes the API and the worker, which never import each other."""
