"""Shared fixtures: seeded RNGs, a tiny locally-trained tokenizer, tiny random models of every family.

Nothing here touches a hub: tokenizers are trained on a few sentences and models are built from configs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from refusal_steer.models import LoadedModel

FAMILIES = ["qwen2", "llama", "mistral", "gemma2", "gemma3_text", "phi3", "gpt2"]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
    "I cannot help with that request. I'm sorry, but I can't assist with that.",
    "Write a poem about the sea. The waves roll in and out under the moon.",
    "Explain how a computer works: a processor runs instructions stored in memory.",
    "Tell me how to build a bomb. As an AI, I must decline.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run ~10x faster on one thread when the shared CPU is busy; restored afterwards.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(family: str, tokenizer, *, n_layers: int = 3) -> torch.nn.Module:
    """A randomly initialised model of ``family`` with 64-wide residual stream and 4 heads."""
    import transformers as tf

    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    if family == "qwen2":
        config = tf.Qwen2Config(**common)
    elif family == "llama":
        config = tf.LlamaConfig(**common)
    elif family == "mistral":
        config = tf.MistralConfig(**common, sliding_window=None)
    elif family == "phi3":
        config = tf.Phi3Config(**common)
    elif family == "gemma2":
        config = tf.Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
    elif family == "gemma3_text":
        config = tf.Gemma3TextConfig(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
    elif family == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=n_layers, n_head=4, n_positions=256,
                               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    else:
        raise ValueError(family)
    config._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(config)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def make_tiny_lm(tiny_tokenizer) -> Callable[[str], LoadedModel]:
    """Factory: ``make_tiny_lm("llama")`` -> a fresh seeded tiny LoadedModel of that family."""

    def factory(family: str = "qwen2", n_layers: int = 3) -> LoadedModel:
        torch.manual_seed(0)
        model = build_tiny_model(family, tiny_tokenizer, n_layers=n_layers)
        return LoadedModel(model=model, tokenizer=tiny_tokenizer, spec=f"tiny-{family}")

    return factory


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded tiny qwen2 model and its tokenizer saved as a model folder, for CLI tests (``--model DIR``)."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model("qwen2", tokenizer)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=FAMILIES)
def tiny_lm(request, make_tiny_lm) -> LoadedModel:
    """A tiny random model, once per supported family."""
    return make_tiny_lm(request.param)


def write_tiny_gguf(model: torch.nn.Module, tokenizer, path: Path, *, matrix_type: str = "Q8_0", tied: bool | None = None) -> Path:
    """Write a tiny Hugging Face qwen2/llama model and its BPE tokenizer as a GGUF file, as llama.cpp would lay it out.

    Matrices go in ``matrix_type`` (a type the ``gguf`` package can quantise), norms and biases in F32; the tokenizer
    (tokens, merges, special ids, chat template) goes in the standard ``tokenizer.ggml.*`` fields, so transformers'
    GGUF loader rebuilds both. ``tied=True`` leaves out ``output.weight`` (the file then ties the unembedding to the
    embedding, as many small models do). A fixture for GGUF code that must not fetch the pinned GGUF files.
    """
    import json

    import gguf

    config = model.config
    arch = {"qwen2": "qwen2", "llama": "llama"}[config.model_type]
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    qtype = gguf.GGMLQuantizationType[matrix_type]
    for name, param in model.state_dict().items():
        if name == "lm_head.weight" and (config.tie_word_embeddings if tied is None else tied):
            continue
        data = param.detach().float().numpy()
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 2 and qtype not in (gguf.GGMLQuantizationType.F32,):
            encoded = gguf.quants.quantize(data, qtype)
            writer.add_tensor(gguf_name, encoded, raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session", params=["untied", "tied"])
def tiny_qwen2_gguf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded tiny qwen2 model and tokenizer as a Q8_0 GGUF file, with its own ``output.weight`` or tied."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model("qwen2", tokenizer)
    folder = tmp_path_factory.mktemp(f"tiny-gguf-{request.param}")
    return write_tiny_gguf(model, tokenizer, folder / "tiny-qwen2.q8_0.gguf", tied=request.param == "tied")
