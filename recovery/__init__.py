"""Recovery: verify a backup, restore it with etcd's own tool, download it, drill it."""
