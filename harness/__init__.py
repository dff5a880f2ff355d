"""Throwaway servers and deployments on loopback, for the tests and the bench alike.

Not part of the installed service: it runs from a checkout (pytest and `python -m bench` put the
repository root on the path).

- processes: free ports, waiting for readiness, stopping, one HTTP request, peak RSS
- servers: etcd (one member or a cluster, optionally TLS) and Redis in temp dirs; etcdctl
- deployment: etcd-backup started from its config file as users start it (Procfile, all-in-one)
- in_process: the API's test client and a worker thread in the test's own process
- fill: fills an etcd with Kubernetes-like objects to a given size
- nginx: the bench's download contender, and the README's proxy that adds the token for a browser
- browser: Debian's chromium, headless, under Selenium, with a fresh profile
- files: config files and keys written 0600, as the service wants them
- pki: a throwaway CA and certificates (needs the test extras' cryptography)
- report: the reliability report's table
"""
