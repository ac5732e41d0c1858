"""SAEs that ship inside the package (bf16 safetensors), found by name.

``load_sae("default")`` (or ``--sae default`` on the command line) gives the TopK SAE trained on the
default model at the layer its refusal direction is selected at (``resid_pre.14``);
``default-resid_pre.13`` and ``default-resid_pre.15`` are the same recipe at the layers next to it, and
``default-resid_pre.10`` ... ``.12``, ``.16`` ... ``.18`` extend the band (TopK, 5120 latents, k = 64). Each folder holds ``cfg.json``,
``sae_weights.safetensors``, ``training.json`` and a ``README.md`` with the exact command that trained
it and its held-out metrics (also in ``docs/results.md``).
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent / "pretrained_weights"

#: Shipped SAEs: short name -> folder under ``pretrained_weights``.
SHIPPED: dict[str, str] = {
    "default": "default-resid_pre.14-topk-8192",
    **{f"default-resid_pre.{layer}{suffix}": f"default-resid_pre.{layer}-topk-8192" for layer in (13, 14, 15) for suffix in ("", "-topk-8192")},
    # The band where refusal is written (issue #16): narrower, so nine SAEs fit 200 MiB (docs/sae.md).
    **{f"default-resid_pre.{layer}{suffix}": f"default-resid_pre.{layer}-topk-5120" for layer in (10, 11, 12, 16, 17, 18)
       for suffix in ("", "-topk-5120")},
}


def shipped_path(name: str) -> Path | None:
    """The folder of a shipped SAE, or None when ``name`` names none (or its files are missing)."""
    folder = SHIPPED.get(name)
    if folder is None:
        return None
    path = _ROOT / folder
    return path if (path / "cfg.json").is_file() else None


def default_band() -> list[str]:
    """The shipped SAEs of the default model, one name per layer in layer order (what ``features find`` uses by default)."""
    folders: dict[str, str] = {}
    for name, folder in SHIPPED.items():
        if name.startswith("default-resid_pre.") and name.count("-") == 1 and shipped_path(name) is not None:
            folders.setdefault(folder, name)
    return sorted(folders.values(), key=lambda n: int(n.rsplit(".", 1)[1]))


def shipped_names() -> list[str]:
    """Names of the shipped SAEs present in this installation."""
    return [name for name in SHIPPED if shipped_path(name) is not None]


__all__ = ["SHIPPED", "default_band", "shipped_path", "shipped_names"]
