"""Bake directional ablation into the weights (Arditi et al. 2024, §2.4 "weight orthogonalization").

Every matrix that writes into the residual stream (token and position embeddings, each attention
output projection and each MLP down projection, with their biases) is projected so its output has no
component along r: ``W_out <- W_out - r r^T W_out``. The result is a plain Hugging Face model whose
``generate`` behaves like the hook-based :func:`~refusal_steer.interventions.all_layers_ablation`.

Post-norm families (Gemma 2/3) normalise each branch *after* the output projection, so a weight edit
is not equivalent to ablating the residual stream there; we refuse rather than export a different model.

A model that came as a GGUF (the default one does) is also written back as a GGUF for llama.cpp and Ollama:
the source file with only the edited tensors replaced (:mod:`refusal_steer.models.gguf_export`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UnsupportedFamilyError
from ..models import LoadedModel
from ..models.adapters import get_submodule
from ..models.default import strip_gguf_quantizer
from ..models.gguf_export import (
    SUPPORTED_ARCHS,
    GgufExport,
    TensorType,
    check_tensor_type,
    gguf_architecture,
    gguf_source_path,
    gguf_tensor_name,
    gguf_tensor_names,
    write_gguf_with_replacements,
)
from ..interventions._vector import as_vector, check_width
from ..hooks import HookPoint, Site

logger = logging.getLogger(__name__)

ORTHOGONALIZED_RECORD = "refusal_steer_orthogonalized.json"
ORTHOGONALIZED_GGUF = "model-orthogonalized.gguf"


def _project_rows(weight: Tensor, r: Tensor) -> None:
    """Rows live in the residual space (embeddings, Conv1D (in, out=d)): W <- W - (W r) r^T."""
    weight.sub_(torch.outer(weight @ r, r))


def _project_columns(weight: Tensor, r: Tensor) -> None:
    """Output dim is the residual space (nn.Linear (out=d, in)): W <- W - r (r^T W)."""
    weight.sub_(torch.outer(r, r @ weight))


def _project_bias(bias: Tensor | None, r: Tensor) -> None:
    if bias is not None:
        bias.sub_((bias @ r) * r)


def _untie_unembedding(lm: LoadedModel, embed: nn.Module) -> None:
    """Give the unembedding its own copy when it shares the embedding matrix.

    The final norm's bias (and mean subtraction) put components along r back into the stream the
    unembedding reads, so editing a shared matrix would change the logits; the unembedding must stay.
    """
    unembed = get_submodule(lm.model, lm.adapter.unembed)
    if unembed.weight.data_ptr() == embed.weight.data_ptr():
        unembed.weight = nn.Parameter(unembed.weight.detach().clone(), requires_grad=False)
        lm.model.config.tie_word_embeddings = False
        text_config = getattr(lm.model.config, "get_text_config", lambda: None)()
        if text_config is not None:
            text_config.tie_word_embeddings = False


def orthogonalize_(lm: LoadedModel, direction: Tensor) -> list[str]:
    """Project ``direction`` out of every residual-stream write of ``lm``, in place; returns the parameter names edited.

    Example:
        >>> orthogonalize_(lm, load_direction("runs/direction").direction)  # doctest: +SKIP
    """
    adapter = lm.adapter
    if adapter.post_norm_branches:
        raise UnsupportedFamilyError(
            f"weight orthogonalisation is not equivalent to ablation for {adapter.family} (post-norm branches)",
            fix="use hook-based ablation (--steer ablate:DIR) for this family",
        )
    unit = as_vector(direction, name="direction", unit=True)
    check_width(unit, [HookPoint(Site.RESID_PRE, 0)], lm, "direction")
    edited: list[nn.Parameter] = []
    with torch.no_grad():
        embed = get_submodule(lm.model, adapter.embed)
        _untie_unembedding(lm, embed)
        r = unit.to(device=embed.weight.device, dtype=embed.weight.dtype)
        _project_rows(embed.weight.data, r)
        edited.append(embed.weight)
        if adapter.family == "gpt2":
            _project_rows(lm.model.transformer.wpe.weight.data, r)
            edited.append(lm.model.transformer.wpe.weight)
        for layer in range(lm.n_layers):
            for path in (adapter.attn_o_proj, adapter.mlp_down_proj):
                module: nn.Module = lm.block_module(layer, path)
                r_local = unit.to(device=module.weight.device, dtype=module.weight.dtype)
                if adapter.conv1d_weights:
                    _project_rows(module.weight.data, r_local)
                else:
                    _project_columns(module.weight.data, r_local)
                _project_bias(getattr(module, "bias", None), r_local)
                edited.extend(p for p in (module.weight, getattr(module, "bias", None)) if p is not None)
    names = {id(p): name for name, p in lm.model.named_parameters()}
    return [names[id(p)] for p in edited]


def export_orthogonalized(
    lm: LoadedModel,
    direction: Tensor,
    out_dir: str | Path,
    *,
    metadata: dict | None = None,
    gguf: bool | None = None,
    gguf_type: TensorType = "f16",
    progress: bool = False,
) -> Path:
    """Orthogonalise ``lm`` in place and save it as a standard Hugging Face folder (safetensors + tokenizer).

    A GGUF-loaded model is written dequantised (its weights are already float tensors in memory) and, unless
    ``gguf=False``, also as ``OUT/model-orthogonalized.gguf`` (see :func:`export_orthogonalized_gguf`);
    ``gguf=True`` makes a model that did not come from a GGUF an error instead of a skip.
    """
    out = Path(out_dir)
    check_tensor_type(gguf_type)
    source = gguf_source_path(lm.spec) if gguf is not False else None
    if gguf and source is None:
        raise UnsupportedFamilyError(
            f"model {lm.spec!r} was not loaded from a GGUF file, so there is no GGUF to copy the tokenizer and metadata from",
            fix="convert the Hugging Face folder this command writes with llama.cpp's convert_hf_to_gguf.py, or pass --no-gguf",
        )
    if source is not None and (arch := gguf_architecture(source)) not in SUPPORTED_ARCHS:
        message = f"no GGUF export for architecture {arch!r} (only {', '.join(SUPPORTED_ARCHS)})"
        if gguf:
            raise UnsupportedFamilyError(message, fix="convert the Hugging Face folder with llama.cpp's convert_hf_to_gguf.py, or pass --no-gguf")
        logger.warning("%s; writing the Hugging Face folder only", message)
        source = None
    edited = orthogonalize_(lm, direction)
    strip_gguf_quantizer(lm.model)
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out, safe_serialization=True)
    lm.tokenizer.save_pretrained(out)
    record = {"source_model": lm.spec, "source_sha256": lm.source_sha256, "edit": "orthogonalize", **(metadata or {})}
    if source is not None:
        written = export_orthogonalized_gguf(lm, edited, source, out / ORTHOGONALIZED_GGUF, tensor_type=gguf_type,
                                             record=record, progress=progress)
        record["gguf"] = {"file": written.path.name, "tensor_type": gguf_type, "replaced": written.replaced,
                          "added": written.added, "bytes": written.bytes}
    (out / ORTHOGONALIZED_RECORD).write_text(json.dumps(record, indent=2, default=str))
    return out


def export_orthogonalized_gguf(
    lm: LoadedModel,
    edited: list[str],
    source: str | Path,
    out_path: str | Path,
    *,
    tensor_type: TensorType = "f16",
    record: dict | None = None,
    progress: bool = False,
) -> GgufExport:
    """Write the GGUF ``source`` with the parameters ``edited`` by :func:`orthogonalize_` replaced by ``lm``'s values.

    When the source ties the unembedding to the embedding (no ``output.weight``), the original embedding is kept
    as ``output.weight`` so the logits stay those of the unedited unembedding, as in the Hugging Face export.
    """
    arch = gguf_architecture(source)
    params = dict(lm.model.named_parameters())
    replacements = {gguf_tensor_name(arch, lm.n_layers, name): params[name].detach().float().cpu().numpy() for name in edited}
    names = gguf_tensor_names(source)
    added = {"output.weight": "token_embd.weight"} if "output.weight" not in names and "token_embd.weight" in replacements else {}
    return write_gguf_with_replacements(source, out_path, replacements, tensor_type=tensor_type, added=added,
                                        record=record, progress=progress)
