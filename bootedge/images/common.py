"""What the two image builders (discovery.py, runtime.py) share: errors, where images go, one
build at a time per cache, apt, the record of a built image and its size report.

An image is identified by the hash of its inputs; `image.json` in the output directory records
it with the files' sizes and sha256, and a build whose hash is already there, with intact files,
does nothing. How each builder hashes its inputs is its own; keeping and checking the record is
this module's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from activities.storage import settings as settings_mod

ARCH = "amd64"
Progress = Callable[[str], None]
T = TypeVar("T")
Info = TypeVar("Info")


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says why and what to do."""


class StalePackageLists(Exception):
    """apt's package lists do not know a package or version: `apt-get update` may help."""


def default_output_dir(kind: str = "discovery") -> Path:
    """Where the boot edge on this host serves images from ($TEMPERED_HOME/edge/images/KIND)."""
    return settings_mod.load().home / "edge" / "images" / kind


def default_cache_dir() -> Path:
    return settings_mod.load().home / "cache" / "images"


def silent(message: str) -> None:
    """The progress callback of a build nobody watches."""


# ---- one build at a time -----------------------------------------------------------------


def run_build(
    output_dir: Path, cache_dir: Path | None, lock_name: str, build: Callable[[Path, Path], Info], say: Progress
) -> Info:
    """Make the directories, then build(output_dir, cache) under the cache's lock (see
    locked_build); the info it returns gets the seconds the whole took."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = locked_build(cache / lock_name, lambda: build(output_dir, cache), say)
    return replace(info, seconds=round(time.monotonic() - started, 2))  # type: ignore[type-var]


def locked_build(lock: Path, build: Callable[[], T], say: Progress) -> T:
    """Run `build` alone (one build per cache at a time); when it finds apt's package lists
    stale, run `apt-get update` once (as root) and build again."""
    with _locked(lock):
        try:
            return build()
        except StalePackageLists as e:
            if os.geteuid() != 0:
                raise ImageBuildError(f"{e}; run 'apt-get update' (as root) and build again") from None
            say(f"{e}: running apt-get update")
            run(["apt-get", "update", "-qq"], what="apt-get update")
        try:
            return build()
        except StalePackageLists as e:
            raise ImageBuildError(f"{e}; run 'apt-get update' and build again") from None


class _locked:
    """An exclusive flock on a file: one build at a time per cache directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ---- the host and apt --------------------------------------------------------------------


def apt_env() -> dict[str, str]:
    return os.environ | {"LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def run(command: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a build tool; on failure, raise with the last lines it printed."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=apt_env(), **kwargs)
    except FileNotFoundError:
        raise ImageBuildError(f"{command[0]} is not installed (needed for {what})") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildError(f"{what} failed ({result.returncode}): " + " | ".join(detail))
    return result


def missing_tools(tools: Iterable[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def check_arch(kind: str) -> None:
    """Images hold the build host's packages: build them on a host of the machines' architecture."""
    arch = run(["dpkg", "--print-architecture"], what="dpkg --print-architecture").stdout.strip()
    if arch != ARCH:
        raise ImageBuildError(f"the {kind} image is built on {ARCH} hosts (this one is {arch})")


def apt_show(*packages: str) -> dict[str, dict[str, str]]:
    """Package -> fields of its candidate version (packages apt does not know are left out)."""
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True, env=apt_env()
    )
    found: dict[str, dict[str, str]] = {}
    for stanza in result.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    return found


# ---- the record: image.json --------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Replace path in one step: the edge may be serving the previous version right now."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, read in chunks (a root.squashfs is hundreds of MB)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def intact_record(output_dir: Path, digest: str) -> dict | None:
    """The image.json in output_dir if it records this hash and every file it lists is intact."""
    try:
        record = json.loads((output_dir / "image.json").read_text())
        if record.get("hash") != digest:
            return None
        for name, meta in record["files"].items():
            if file_digest(output_dir / name) != (meta["bytes"], meta["sha256"]):
                return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def existing_image(info_type: type[Info], output_dir: Path, digest: str, files: Iterable[str]) -> Info | None:
    """The image in output_dir, as an info_type with built=False, if it has this hash and
    exactly these files, intact."""
    record = intact_record(output_dir, digest)
    if record is None or set(record["files"]) != set(files):
        return None
    known = info_type.__dataclass_fields__  # type: ignore[attr-defined]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in known}
    return info_type(**fields, output_dir=output_dir, built=False)


def write_record(info: Any, files: Iterable[str], **extra: Any) -> None:
    """image.json for a built image: its info (what a later build reads back), extra fields,
    each file's size and sha256, and when it was built."""
    record = {
        **{k: v for k, v in asdict(info).items() if k not in ("output_dir", "built", "seconds")},
        **extra,
        "files": {name: dict(zip(("bytes", "sha256"), file_digest(info.output_dir / name))) for name in files},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(info.output_dir / "image.json", (json.dumps(record, indent=2) + "\n").encode())


# ---- the report --------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def print_sizes(kind: str, info: Any, rows: Iterable[tuple[str, int, int | None]], summary: str) -> None:
    """The size table (file, size, unpacked) on stdout and a summary line on stderr, as
    `tempered image build KIND` prints them."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{kind} image {info.hash[:12]}" + ("" if info.built else " (already up to date)"),
        caption=str(info.output_dir),
    )
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("unpacked", justify="right")
    for name, size, unpacked in rows:
        table.add_row(name, mib(size), "" if unpacked is None else mib(unpacked))
    Console(soft_wrap=True).print(table)
    Console(stderr=True, soft_wrap=True).print(f"{summary}; {info.seconds:.1f} s")
