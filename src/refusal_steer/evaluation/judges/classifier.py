"""The ``classifier`` judge: any Hugging Face sequence classifier in a local directory.

The user points at a directory holding a ``*ForSequenceClassification`` model and its tokenizer
(e.g. a fine-tuned refusal detector). Which label means "refusal" comes from ``refusal_label`` (a label
name or index) or, when not given, from the one label in ``config.id2label`` whose name contains
"refus". The input is the completion alone, or the prompt and completion as a text pair
(``use_prompt=True``), whichever the classifier was trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...errors import ConfigError, ModelNotFoundError
from .base import JudgeError, register_judge


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected a boolean, got {value!r}", fix="write true or false")


def _weights_digest(path: Path) -> str:
    """First 12 hex digits of a sha256 over the weight files' names and bytes (changes when the weights do)."""
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(weights.name.encode())
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


@register_judge("classifier")
class ClassifierJudge:
    """Refusal if the classifier's argmax label (or P(refusal) >= ``threshold``) is the refusal label.

    Args:
        path: local directory with the classifier (``config.json``, weights, tokenizer).
        refusal_label: label name (from ``id2label``) or index meaning "refusal"; found by name when omitted.
        use_prompt: feed ``(prompt, completion)`` as a text pair instead of the completion alone.
        threshold: if set, refusal when the softmax probability of the refusal label is >= it.
        batch_size: completions per forward pass.
        max_length: truncation length in tokens.
        device: torch device (default CPU).

    Example:
        >>> judge = ClassifierJudge("models/refusal-clf", refusal_label="REFUSAL")  # doctest: +SKIP
        >>> judge(["q"], ["I can't help with that."])  # doctest: +SKIP
        [True]
    """

    name: ClassVar[str] = "classifier"
    main_option: ClassVar[str] = "path"

    def __init__(
        self,
        path: str | Path,
        refusal_label: str | int | None = None,
        use_prompt: bool | str = False,
        threshold: float | str | None = None,
        batch_size: int | str = 16,
        max_length: int | str = 512,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{self.path} is not a model directory (no config.json)",
                fix="point --judge classifier:DIR at a saved Hugging Face sequence classifier",
            )
        self.use_prompt = _as_bool(use_prompt)
        #: Given a conversation, a text-pair classifier reads all of it; a completion-only one reads the answer.
        self.reads_prompt = self.use_prompt
        self.threshold = None if threshold in (None, "") else float(threshold)
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"cannot load a sequence classifier from {self.path}: {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.id2label = {int(i): str(v) for i, v in self.model.config.id2label.items()}
        self.refusal_index = self._resolve_label(refusal_label)
        self.version = f"{self.path.name}@{_weights_digest(self.path)}:label{self.refusal_index}"

    def _resolve_label(self, label: str | int | None) -> int:
        labels = self.id2label
        if label is None or label == "":
            found = [i for i, name in labels.items() if "refus" in name.lower()]
            if len(found) != 1:
                raise ConfigError(
                    f"cannot tell which label of {labels} means refusal",
                    fix="pass refusal_label=NAME or an index (--judge-opt refusal_label=...)",
                )
            return found[0]
        if isinstance(label, int) or str(label).lstrip("-").isdigit():
            index = int(label)
            if index not in labels:
                raise ConfigError(f"refusal_label index {index} is not one of {sorted(labels)}")
            return index
        by_name = [i for i, name in labels.items() if name == label]
        if not by_name:
            raise ConfigError(f"refusal_label {label!r} is not a label of this classifier", fix=f"labels: {labels}")
        return by_name[0]

    @torch.inference_mode()
    def logits(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Classifier logits, shape ``(n, n_labels)``, float32 on CPU."""
        if len(prompts) != len(completions):
            raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions")
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(completions), self.batch_size):
            texts = list(completions[start:start + self.batch_size])
            firsts = list(prompts[start:start + self.batch_size]) if self.use_prompt else texts
            seconds = texts if self.use_prompt else None
            batch = self.tokenizer(
                firsts, seconds, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(device)
            try:
                chunks.append(self.model(**batch).logits.float().cpu())
            except RuntimeError as exc:
                raise JudgeError(f"the classifier at {self.path} failed on a batch: {exc}") from exc
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.id2label))

    def probabilities(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """P(refusal label) for each pair."""
        return torch.softmax(self.logits(prompts, completions), dim=-1)[:, self.refusal_index].tolist()

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[bool]:
        if self.threshold is not None:
            return [p >= self.threshold for p in self.probabilities(prompts, completions)]
        # Argmax: the refusal label wins when its logit is the largest.
        return (self.logits(prompts, completions).argmax(dim=-1) == self.refusal_index).tolist()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "refusal_label": self.id2label[self.refusal_index],
            "use_prompt": self.use_prompt,
            "threshold": self.threshold,
        }
