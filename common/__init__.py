"""What the API and the workers share: config, backup-dir rules, queue and etcd connections."""
