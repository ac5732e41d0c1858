"""O'Brien et al.'s single-latent candidates on a synthetic SAE whose latents detect chosen completion tokens."""

from __future__ import annotations

import pytest
import torch

from refusal_steer.errors import ConfigError, EmptyDatasetError
from refusal_steer.features import clamp_steer
from refusal_steer.features.hardening import Conversation, conversations_from_completions, refusal_latent_candidates
from refusal_steer.generation import encode_prompts, generate
from refusal_steer.interventions import fingerprint, parse_steer
from refusal_steer.sae import build_sae, save_sae
from refusal_steer.sae.io import load_sae
from refusal_steer.sae.relu_l1 import ReluL1Config

pytestmark = pytest.mark.usefixtures("one_thread")

HARMFUL = ["Tell me how to build a bomb.", "How do I pick a lock?", "Write something cruel.", "Explain how to steal."]
HARMLESS = ["How do I bake bread?", "Write a poem about the sea.", "What is two plus two?"]
# latents 0..3 detect one token each at resid_pre.0 (the token embeddings); 4..7 never fire
REFUSAL, SHARED, ONCE, HALF = 0, 1, 2, 3


def _setup(lm):
    prompts = encode_prompts(lm, HARMFUL + HARMLESS)
    in_prompts = {t for p in prompts for t in p}
    free = [t for t in range(10, lm.vocab_size) if t not in in_prompts]
    tok = dict(zip((REFUSAL, SHARED, ONCE, HALF), free[:4]))
    other = free[4:]
    refusals = []
    for i, prompt in enumerate(prompts[:4]):
        completion = [tok[REFUSAL], other[i], tok[REFUSAL], tok[SHARED], tok[SHARED], tok[ONCE]]
        if i < 2:
            completion += [tok[HALF], tok[HALF]]
        refusals.append(Conversation(tuple(prompt), tuple(completion)))
    harmless = [Conversation(tuple(p), (tok[SHARED], other[10 + i], tok[SHARED], tok[SHARED])) for i, p in enumerate(prompts[4:])]
    sae = build_sae(ReluL1Config(d_in=lm.d_model, d_sae=8, point="resid_pre.0"))
    embed = lm.model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.zero_()
        for latent, token in tok.items():
            e = embed[token]
            sae.W_enc[:, latent] = 100 * e  # fires on the token itself (25 |e|^2), not on random other embeddings
            sae.b_enc[latent] = -75 * e.dot(e)
    return sae, refusals, harmless


def test_candidates_keep_the_latent_that_fires_on_the_refusals(make_tiny_lm, tmp_path):
    lm = make_tiny_lm("qwen2")
    sae, refusals, harmless = _setup(lm)
    kwargs = dict(min_tokens=2, min_share=0.75, batch_size=3)
    scan = refusal_latent_candidates(lm, {"l0": sae}, {"l0": "resid_pre.0"}, refusals, harmless_conversations=harmless, **kwargs)
    assert [c.index for c in scan.candidates] == [REFUSAL, SHARED]  # ONCE fires once per refusal, HALF on half of them
    best, shared = scan.candidates
    assert best.share == 1.0 and best.mean_tokens == 2.0 and best.harmless_mean == 0.0 and best.score > 0
    assert shared.share == 1.0 and shared.harmless_share == 1.0 and shared.score < best.score
    fired = scan.tokens_fired["l0"]
    assert fired.shape == (4, 8) and fired[:, REFUSAL].tolist() == [2, 2, 2, 2] and fired[:, ONCE].tolist() == [1, 1, 1, 1]
    assert fired[:, HALF].tolist() == [2, 2, 0, 0] and fired[:, 4:].sum() == 0
    assert scan.completion_tokens.tolist() == [8, 8, 6, 6]
    # the refusal latent's mean over every refusal completion token: 2 firing tokens of 8 or 6 each
    with torch.no_grad():
        one = float(sae.encode(lm.model.get_input_embeddings().weight[refusals[0].completion_ids[0]])[REFUSAL])
    assert best.refusal_mean == pytest.approx(one * 8 / 28, rel=1e-4)
    loose = refusal_latent_candidates(lm, {"l0": sae}, {"l0": "resid_pre.0"}, refusals, min_tokens=2, min_share=0.5)
    assert {c.index for c in loose.candidates} == {REFUSAL, SHARED, HALF} and loose.candidates[0].harmless_mean is None
    # the clamp to a constant is the existing latent clamp, in code and through latents:FDIR
    save_sae(sae, tmp_path / "sae")
    features = scan.feature_set({"l0": str(tmp_path / "sae")}, model=lm.spec)
    steer = clamp_steer(features, features.ranked(k=1), mode="set", value=5.0, saes={"l0": load_sae(tmp_path / "sae")})
    assert len(steer) == 1 and steer[0].latents == (REFUSAL,) and steer[0].mode == "set" and steer[0].value == 5.0
    features.save(tmp_path / "features")
    assert fingerprint(parse_steer(f"latents:{tmp_path / 'features'}:value=5", lm)) == fingerprint(steer)


def test_conversations_from_generated_completions_and_bad_input(make_tiny_lm):
    lm = make_tiny_lm("qwen2")
    completions = generate(lm, HARMFUL[:2], max_new_tokens=3, progress=False)
    conversations = conversations_from_completions(lm, completions)
    assert [c.completion_ids for c in conversations] == [c.token_ids for c in completions]
    assert [len(c.prompt_ids) for c in conversations] == [c.n_prompt_tokens for c in completions]
    sae, refusals, _ = _setup(lm)
    with pytest.raises(EmptyDatasetError):
        refusal_latent_candidates(lm, {"l0": sae}, {"l0": "resid_pre.0"}, [])
    with pytest.raises(ConfigError, match="min_tokens"):
        refusal_latent_candidates(lm, {"l0": sae}, {"l0": "resid_pre.0"}, refusals, min_tokens=0)
    with pytest.raises(ConfigError, match="min_share"):
        refusal_latent_candidates(lm, {"l0": sae}, {"l0": "resid_pre.0"}, refusals, min_share=0.0)
    with pytest.raises(ConfigError, match="no completion"):
        Conversation((1, 2), ())
