"""The container image (the Containerfile at the root), built and run without a container runtime.

No container daemon runs here and an OCI runtime cannot start containers, but podman builds images with
the vfs storage driver and chroot isolation. So the image's base is a Debian root file system that
debootstrap makes (cached: it depends only on the release and the mirror), podman builds the image on
it in a storage of the test's own (--root/--runroot: nothing goes to /var/lib/containers), and a
program runs from the image as a container would run it: in a mount namespace of its own, on the
image's root file system mounted read-only, with a fresh tmpfs on /tmp, the volumes it is given, and
as the image's user and environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import ROOT

RELEASE = "bookworm"
"""The Debian release of the Containerfile's default BASE (debian:bookworm-slim)."""
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BASE_EXCLUDES = ("./var/lib/apt/lists/*", "./var/cache/apt/*", "./usr/share/doc/*", "./usr/share/man/*",
                 "./usr/share/locale/*", "./dev/*")
"""Left out of the base image, as Debian's slim images leave them out (/dev is the runtime's)."""
TMP_SIZE = "256m"
"""The tmpfs on /tmp: the drill and verify extract a snapshot there (the test's are small)."""


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here for RELEASE (deb822 .sources or one-line .list files), else deb.debian.org."""
    files = sorted(sources.glob("sources.list.d/*.sources")) + [sources / "sources.list"]
    files += sorted(sources.glob("sources.list.d/*.list"))
    for path in files:
        text = path.read_text() if path.is_file() else ""
        for stanza in re.split(r"\n\s*\n", text):  # deb822: URIs and Suites in one stanza
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:(.*)$", stanza, re.MULTILINE)
            if uris and suites and RELEASE in suites.group(1).split():
                return uris.group(1)
        one_line = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{RELEASE}\s", text, re.MULTILINE)
        if one_line:
            return one_line.group(1)
    return DEFAULT_MIRROR


def debootstrap_base(cache_dir: Path, mirror: str) -> Path:
    """A tarball of a minimal Debian RELEASE root file system, made once per mirror and kept in `cache_dir`."""
    key = hashlib.sha256(f"{RELEASE} {mirror} {BASE_EXCLUDES}".encode()).hexdigest()[:16]
    tarball = cache_dir / f"debian-{RELEASE}-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))  # a run of its own: parallel runs may race
    rootfs.chmod(0o755)  # it becomes the image's / (mkdtemp made it 0700: no other user could reach a file)
    try:
        subprocess.run(["/usr/sbin/debootstrap", "--variant=minbase", f"--keyring={KEYRING}", RELEASE, str(rootfs),
                        mirror], check=True, capture_output=True, timeout=600)
        partial = rootfs.with_suffix(".tar")
        excludes = [f"--exclude={pattern}" for pattern in BASE_EXCLUDES]
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), *excludes, "."], check=True, timeout=300)
        partial.rename(tarball)  # only a whole tarball is ever taken from the cache
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.with_suffix(".tar").unlink(missing_ok=True)
    return tarball


# podman keeps a cache of its own in /var/lib/containers whatever --root says: in a mount namespace of
# its own, that directory is one of the test's.
_PRIVATE_SYSTEM_DIR = 'mkdir -p "$0" /var/lib/containers && mount --bind "$0" /var/lib/containers && exec "$@"'


class Podman:
    """podman on a storage of its own (vfs: no overlay mounts, no fuse), for builds in a chroot."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        # podman refuses a runroot path over 50 characters, which a pytest temp dir under pytest-xdist is.
        self.runroot = Path(tempfile.mkdtemp(prefix="podman-run-", dir="/tmp"))
        self.prefix = ["unshare", "--mount", "--", "sh", "-c", _PRIVATE_SYSTEM_DIR, str(storage / "system"),
                       "podman", "--root", str(storage / "root"), "--runroot", str(self.runroot),
                       "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--events-backend=none"]

    def __call__(self, *args: str, stdin: Path | None = None, timeout: float = 120) -> str:
        with open(stdin or os.devnull, "rb") as source:
            done = subprocess.run([*self.prefix, *args], stdin=source, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done.stdout.strip()

    def remove_everything(self) -> None:
        """Unmount and remove every image, then the storage itself."""
        try:
            self("image", "unmount", "--all")
            self("rmi", "--all", "--force")
        finally:
            shutil.rmtree(self.storage, ignore_errors=True)
            shutil.rmtree(self.runroot, ignore_errors=True)


@dataclass(frozen=True)
class Mount:
    """A host path that a program run from the image sees at `target`: a file or a directory that is in the
    image already (the root is read-only: nothing can be made there; /mnt is an empty directory)."""

    source: Path
    target: str
    writable: bool = False


# Runs in a new mount namespace (unshare: private propagation, so every mount goes with the process):
# the image's root read-only, /dev and /proc as a runtime gives them, a tmpfs on /tmp, the volumes;
# then the program, chrooted, as the image's user, with the image's environment and working dir only.
_RUN_IN_ROOT = r"""set -e
root=$1 tmp_size=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs -o "mode=1777,size=$tmp_size" tmpfs "$root/tmp"
while [ "$1" != -- ]; do
  mount --bind "$1" "$root$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$root$2"; fi
  shift 3
done
shift
exec "$@"
"""


@dataclass
class ContainerImage:
    """The built image, mounted; `run` and `start` run its programs as the container would."""

    name: str
    root: Path
    """Where `podman image mount` put the image's root file system (never written to)."""
    user: str
    env: dict[str, str]
    workdir: str
    size: int
    """Bytes, as `podman image inspect` counts them (all layers)."""
    base: Path
    """The tarball of the root file system it was built on."""
    build_seconds: dict[str, float] = field(default_factory=dict)

    def command(self, args: Sequence[str], mounts: Sequence[Mount] = (),
                env: Mapping[str, str] | None = None) -> list[str]:
        """The host command line that runs `args` from the image, with `mounts`, as the image's user, in the
        image's environment plus `env` (as `-e` adds to a container's)."""
        volumes = [part for mount in mounts for part in (str(mount.source), mount.target,
                                                         "rw" if mount.writable else "ro")]
        environment = [f"{name}={value}" for name, value in {**self.env, **(env or {})}.items()]
        return ["unshare", "--mount", "--", "sh", "-c", _RUN_IN_ROOT, "sh", str(self.root), TMP_SIZE, *volumes, "--",
                "chroot", f"--userspec={self.user}", "--groups=", str(self.root),
                "env", "-i", f"--chdir={self.workdir}", *environment, *args]

    def run(self, args: Sequence[str], mounts: Sequence[Mount] = (), timeout: float = 120,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `args` from the image to its end; return what it did (its status is the caller's to check)."""
        return subprocess.run(self.command(args, mounts, env), capture_output=True, text=True, timeout=timeout)

    def start(self, args: Sequence[str], log: Path, mounts: Sequence[Mount] = ()) -> subprocess.Popen[bytes]:
        """Start `args` from the image, its output to `log`; the process is the program itself (exec all the way)."""
        with open(log, "wb") as out:
            return subprocess.Popen(self.command(args, mounts), stdout=out, stderr=subprocess.STDOUT)


def build(podman: Podman, base_tarball: Path, name: str = "localhost/etcd-backup-test") -> ContainerImage:
    """Build the Containerfile on the base in `base_tarball`; return the image, mounted."""
    seconds: dict[str, float] = {}
    began = time.monotonic()
    podman("import", "-", "localhost/etcd-backup-test-base", stdin=base_tarball)
    seconds["import"] = time.monotonic() - began
    began = time.monotonic()
    podman("build", "--isolation=chroot", "--layers=false", "--pull=never",
           "--build-arg=BASE=localhost/etcd-backup-test-base", *_pip_trust(), "--tag", name,
           "--file", str(ROOT / "Containerfile"), str(ROOT), timeout=900)
    seconds["build"] = time.monotonic() - began
    config = json.loads(podman("image", "inspect", name))[0]
    image_config = config["Config"]
    env = dict(entry.split("=", 1) for entry in image_config.get("Env", []))
    # No USER in the image: a runtime runs it as root.
    user = image_config.get("User") or "0:0"
    return ContainerImage(name=name, root=Path(podman("image", "mount", name)), user=user, env=env,
                          workdir=image_config.get("WorkingDir") or "/", size=config["Size"], base=base_tarball,
                          build_seconds=seconds)


MERGED_USR = {"/bin/": "/usr/bin/", "/sbin/": "/usr/sbin/", "/lib/": "/usr/lib/", "/lib64/": "/usr/lib64/"}
"""Debian 12's merged /usr: /lib is a link to usr/lib, but a package's file list may name /lib/..."""


def added_files(image: ContainerImage) -> set[str]:
    """The paths in the image that are neither in its base nor any installed Debian package's files: what the
    Containerfile's own steps, the packages' maintainer scripts and the build itself left."""
    with tarfile.open(image.base) as tar:
        base = {"/" + member.name.removeprefix("./").rstrip("/") for member in tar.getmembers()}
    packaged: set[str] = set()
    for listing in (image.root / "var/lib/dpkg/info").glob("*.list"):
        for line in listing.read_text().splitlines():
            prefix = next((old for old in MERGED_USR if line.startswith(old)), None)
            packaged.add(MERGED_USR[prefix] + line.removeprefix(prefix) if prefix else line)
    found = set()
    for directory, subdirectories, files in os.walk(image.root):
        for name in subdirectories + files:
            path = "/" + str((Path(directory) / name).relative_to(image.root))
            if path not in base and path not in packaged:
                found.add(path)
    return found


def _pip_trust() -> list[str]:
    """podman build options that let pip in the build trust what pip trusts here (a TLS-intercepting
    proxy's CA, named by $PIP_CERT): the Containerfile's pip-cert build secret, which only its pip step
    mounts. None otherwise."""
    cert = os.environ.get("PIP_CERT")
    if not cert or not Path(cert).is_file():
        return []
    return [f"--secret=id=pip-cert,src={cert}"]


@contextmanager
def built_image(work: Path, base_cache: Path) -> Iterator[ContainerImage]:
    """The image built from the working tree in a podman storage under `work`, removed afterwards."""
    began = time.monotonic()
    base = debootstrap_base(base_cache, debian_mirror())
    debootstrap_seconds = time.monotonic() - began
    podman = Podman(work / "podman")
    try:
        image = build(podman, base)
        image.build_seconds["debootstrap"] = debootstrap_seconds
        yield image
    finally:
        podman.remove_everything()
