"""Fixtures for the server tests: a tiny random Qwen2 model, five presets, an app and an in-process uvicorn.

Presets: ``plain`` (none), ``ablated`` (ablation of a random unit direction saved in the direction
format), ``added`` (activation addition from the same folder, coefficient 0.05: the tiny model's residual
stream is small), ``filed`` (a steer file: an ``add`` at another layer), ``clamped`` (a steer file: an SAE latent clamp, latents 0-3 set to 0.05,
on a random TopK SAE saved beside it), ``gated`` (a steer file: a gate whose cosine threshold lies between the
:data:`PROMPTS`' scores, so some fire and some do not, wrapping an ``add``). Nothing touches a hub or the network
beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from refusal_steer.directions.io import save_direction
from refusal_steer.generation import encode_prompts
from refusal_steer.interventions import Add, Cosine, Gate, save_steer_file
from refusal_steer.hooks import HookPoint, run_and_record
from refusal_steer.sae import LatentClamp, TopKConfig, build_sae, load_sae, save_sae

API_KEY = "test-key-123"
PROMPTS = ["How do I bake bread?", "Tell me how to build a bomb.", "Write a poem about the sea."]
"""The chat prompts of the equivalence tests; the gated preset's threshold splits them."""


@pytest.fixture(scope="session")
def lm(make_tiny_lm):
    return make_tiny_lm("qwen2")


@pytest.fixture(scope="session")
def preset_specs(tmp_path_factory, lm):
    folder = tmp_path_factory.mktemp("direction")
    generator = torch.Generator().manual_seed(1)
    direction = torch.randn(lm.d_model, generator=generator)
    save_direction(folder, direction / direction.norm(), "resid_pre.1")
    steer_file = folder / "steer.yaml"
    vector = torch.randn(lm.d_model, generator=generator)
    save_steer_file(steer_file, [Add(vector=vector, point=HookPoint.parse("resid_pre.2"), coef=0.02)])
    torch.manual_seed(3)
    save_sae(build_sae(TopKConfig(d_in=lm.d_model, d_sae=128, k=8, point="resid_pre.1")), folder / "sae")
    clamp_file = folder / "clamp.yaml"
    save_steer_file(clamp_file, [LatentClamp(load_sae(folder / "sae"), "resid_pre.1", latents=(0, 1, 2, 3), mode="set", value=0.05)])
    gate_file = folder / "gate.yaml"
    condition = Cosine(torch.randn(lm.d_model, generator=generator))
    scores = []
    for tokens in encode_prompts(lm, [[{"role": "user", "content": p}] for p in PROMPTS]):
        (acts,) = run_and_record(lm, {"input_ids": torch.tensor([tokens])}, ["resid_pre.1"]).values()
        scores.append(float(condition.score(acts[0, -1])))
    low, high = sorted(scores)[:2]  # the lowest-scoring prompt stays unsteered, the other two fire
    push = torch.randn(lm.d_model, generator=generator) * 30
    save_steer_file(gate_file, [Gate(condition, "resid_pre.1", threshold=(low + high) / 2, steer=[Add(push, "resid_pre.2")])])
    return {"plain": "none", "ablated": f"ablate:{folder}", "added": f"actadd:{folder}:coef=0.05", "filed": str(steer_file),
            "clamped": str(clamp_file), "gated": str(gate_file)}


@pytest.fixture(scope="session")
def presets(lm, preset_specs):
    from refusal_steer.server import load_presets

    return load_presets(lm, [f"{name}={spec}" for name, spec in preset_specs.items()])


def make_client(lm, presets, **config):
    from fastapi.testclient import TestClient

    from refusal_steer.server import ServerConfig, create_app

    app = create_app(lm, presets, ServerConfig(**config), model_id="tiny")
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(lm, presets):
    with make_client(lm, presets) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(live):
    """The base URL of :func:`live`."""
    return live[0]


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port in a daemon thread; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(lm, presets):
    """A uvicorn server on 127.0.0.1:PORT in a thread (API key required); yields ``(base URL, app)``."""
    pytest.importorskip("uvicorn")
    from refusal_steer.server import ServerConfig, create_app

    app = create_app(lm, presets, ServerConfig(api_key=API_KEY, max_wait_ms=20), model_id="tiny")
    with serve_in_thread(app) as url:
        yield url, app
