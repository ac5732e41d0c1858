"""Data-parallel training (gloo on CPU): two processes train the SAE one process trains on the same token order.

One spawn of two processes runs every scenario (a sharded step per kind, a full training run per kind,
an interrupted and resumed run) and writes what each rank saw; the tests compare those files with
the same computations done here in one process.

Tolerances: the two-process run sums the same per-token terms in a different order (two partial sums
then an all-reduce, each variance in two passes), so one step's gradient matches to float32 rounding
(measured: at most 4e-7 relative; checked at rtol 1e-5). After 41 Adam steps the weights (of order
0.1 to 0.8) differ by at most 1.8e-7, one to three float32 ulps (measured for all four kinds, and
for the CLI run); they are compared at atol 1e-5, headroom for other thread counts and BLAS builds.
A real mistake is far larger: AuxK normalised by the shard's own residual variance instead of the
batch's moves one step's W_enc gradient by 5e-3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import Tensor

import refusal_steer
from refusal_steer.sae import TrainConfig, build_sae, train_sae
from refusal_steer.sae.distributed import DataParallel
from refusal_steer.sae.shards import write_shard
from refusal_steer.sae.training import TrainResult, latest_checkpoint

from .conftest import ALL_ARCHITECTURES, D_SAE, build_cfg, synthetic

WORLD = 2
STEP_ROWS = 67  # an odd batch: shards of 34 and 33 rows
WEIGHT_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data() -> list[Tensor]:
    """2563 rows: 40 full batches of 64, then a last batch of 3 (shards of 2 and 1 rows)."""
    return [synthetic(640, seed=s) for s in range(4)] + [synthetic(3, seed=9)]


def _train_cfg() -> TrainConfig:
    # dead_tokens = two batches: latents go dead early and AuxK is on for most of the run
    return TrainConfig(tokens=41 * 64, batch_size=64, buffer_batches=4, lr=3e-3, dead_tokens=128, checkpoint_every=8, log_every=1,
                       progress=False)


def _step(arch: str, parallel: DataParallel | None) -> dict[str, Tensor]:
    """One training step on a fixed batch (a third of the latents marked dead): this process's gradients and step output."""
    torch.manual_seed(0)
    sae = build_sae(build_cfg(arch))
    x = synthetic(STEP_ROWS, seed=5)
    sae.initialize_from_data(x)
    sae.train()
    dead = torch.arange(D_SAE) % 3 == 0
    if parallel is None:
        res = sae.training_step(x, dead=dead, progress=0.5)
    else:
        res = sae.training_step(x[parallel.rows(STEP_ROWS)], dead=dead, progress=0.5, shard=parallel.shard(STEP_ROWS))
    res.loss.backward()
    out = {f"grad.{name}": p.grad.clone() for name, p in sae.named_parameters()}
    out.update({name: getattr(res, name).detach().clone() for name in ("loss", "mse", "fvu", "l0", "aux_loss")})
    out["fired"] = res.fired.to(torch.uint8)
    out.update({f"buffer.{name}": b.clone() for name, b in sae.named_buffers()})
    return out


def _train(arch: str, parallel: DataParallel | None, out_dir: Path | None = None, stop_after: int | None = None) -> TrainResult:
    torch.manual_seed(0)
    return train_sae(build_sae(build_cfg(arch)), _data(), _train_cfg(), out_dir, stop_after=stop_after, parallel=parallel)


def _save(path: Path, tensors: dict[str, Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One of the spawned processes: every scenario, results written per rank under ``out``."""
    torch.set_num_threads(1)  # two processes on a small machine
    # a short timeout: a collective one rank never joins fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    root = Path(out)
    try:
        parallel = DataParallel(rank=rank, world_size=world)
        for arch in ALL_ARCHITECTURES:
            _save(root / f"step.{arch}.{rank}.safetensors", _step(arch, parallel))
            res = _train(arch, parallel)
            _save(root / f"train.{arch}.{rank}.safetensors", res.sae.state_dict())
            (root / f"history.{arch}.{rank}.json").write_text(json.dumps(res.history))
        run = root / "resumed"  # shared by both ranks, as a run directory on a shared disk would be
        _train("topk", parallel, run, stop_after=13)
        res = _train("topk", parallel, run)
        _save(root / f"resumed.{rank}.safetensors", res.sae.state_dict())
        (root / f"resumed.{rank}.json").write_text(json.dumps({"resumed_from": res.resumed_from, "steps": res.steps}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of what the two spawned ranks wrote."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_sharded_step_gradient_is_the_whole_batch_gradient(two_processes: Path, arch: str) -> None:
    one = _step(arch, None)
    ranks = [load_file(str(two_processes / f"step.{arch}.{r}.safetensors")) for r in range(WORLD)]
    for name in one:
        if name.startswith("grad."):  # each rank holds its share; the trainer's all-reduce sums them
            summed = sum(r[name] for r in ranks)
            assert torch.allclose(summed, one[name], rtol=1e-5, atol=1e-7), (name, float((summed - one[name]).abs().max()))
            if one[name].abs().max() > 1e-6:  # a share is not the whole: the test cannot pass by ignoring the other rank
                assert not torch.allclose(ranks[0][name], one[name], rtol=1e-3, atol=1e-6), name
        else:  # statistics, fired mask and buffers (BatchTopK's threshold) are the whole batch's on every rank
            for r in ranks:
                assert torch.allclose(r[name].double(), one[name].double(), rtol=1e-5, atol=1e-7), (name, r[name], one[name])
    if arch in ("topk", "batchtopk"):
        assert float(one["aux_loss"]) > 0  # the AuxK term was part of the compared gradient


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_two_processes_train_the_same_sae(two_processes: Path, arch: str) -> None:
    one = _train(arch, None)
    assert one.steps == 41 and one.tokens == 2563
    ranks = [load_file(str(two_processes / f"train.{arch}.{r}.safetensors")) for r in range(WORLD)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # every rank took the same steps, bit for bit
    diff = _max_diff(one.sae.state_dict(), ranks[0])
    assert diff < WEIGHT_ATOL, f"{arch}: max |w_1 - w_2| = {diff:.3g}"
    history = json.loads((two_processes / f"history.{arch}.0.json").read_text())
    assert len(history) == len(one.history) == 41
    for mine, theirs in zip(one.history, history, strict=True):
        for key in ("loss", "fvu", "l0", "aux_loss", "dead_fraction"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), (key, mine["step"])
    if arch == "topk":
        assert max(h["dead_fraction"] for h in one.history) > 0 and max(h["aux_loss"] for h in one.history) > 0  # AuxK was on


def test_two_process_resume_equals_one_uninterrupted_process(two_processes: Path) -> None:
    one = _train("topk", None)
    record = json.loads((two_processes / "resumed.0.json").read_text())
    assert record == {"resumed_from": 13, "steps": 41}
    assert _max_diff(one.sae.state_dict(), load_file(str(two_processes / "resumed.0.safetensors"))) < WEIGHT_ATOL
    run = two_processes / "resumed"
    assert latest_checkpoint(run) is not None and latest_checkpoint(run).name.endswith("41")
    assert json.loads((run / "training.json").read_text())["steps"] == 41


def test_rows_split_a_batch_contiguously() -> None:
    for n in (0, 1, 5, 64, 67):
        for world in (1, 2, 3):
            parts = [DataParallel(rank=r, world_size=world).rows(n) for r in range(world)]
            assert [i for s in parts for i in range(n)[s]] == list(range(n))
            assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1


# --------------------------------------------------------------------------- the command line under torchrun
def _cli_args(acts: Path, out: Path) -> list[str]:
    return ["sae", "train", "--activations", str(acts), "--point", "resid_pre.2", "--arch", "topk", "--width", "64", "--k", "4",
            "--tokens", "2048", "--batch-size", "128", "--lr", "0.005", "--dead-tokens", "256", "--checkpoint-every", "8",
            "--out", str(out), "--no-progress", "--json"]


def test_cli_under_torchrun_trains_the_one_process_sae(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from refusal_steer.cli import build_app

    acts = tmp_path / "acts"
    acts.mkdir()
    for i in range(2):
        write_shard(acts / f"shard_{i:03d}.safetensors", synthetic(1024, seed=i))
    r = CliRunner().invoke(build_app(), _cli_args(acts, tmp_path / "one"))
    assert r.exit_code == 0, r.output

    launcher = tmp_path / "refusal_steer_cli.py"  # torchrun runs a script; this one is the console script's body
    launcher.write_text("from refusal_steer.cli import main\nmain()\n")
    src = str(Path(refusal_steer.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(launcher), *_cli_args(acts, tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["steps"] == 16  # one JSON document: only rank 0 prints
    one = load_file(str(tmp_path / "one" / "sae_weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "sae_weights.safetensors"))
    assert _max_diff(one, two) < WEIGHT_ATOL
    assert json.loads((tmp_path / "two" / "training.json").read_text())["steps"] == 16


def test_cli_under_torchrun_refuses_to_cache_and_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from refusal_steer.cli import build_app
    from refusal_steer.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; the check comes before any model or process group
    r = CliRunner().invoke(build_app(), ["sae", "train", "--model", "default", "--point", "resid_pre.14", "--tokens", "1000",
                                         "--out", str(tmp_path / "sae")])
    assert isinstance(r.exception, ConfigError), r.output
    assert "--cache-only" in (r.exception.fix or "") and "--activations" in r.exception.fix


def test_cli_cache_only_caches_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from refusal_steer.cli import build_app

    def fake_cache(lm, points, out, n_tokens, seed, *, progress=True):  # noqa: ANN001, ANN202
        out.mkdir(parents=True)
        write_shard(out / "shard_000.safetensors", synthetic(256))
        return out

    monkeypatch.setattr("refusal_steer.models.load_model", lambda *a, **k: object())
    monkeypatch.setattr("refusal_steer.runs.sae_stage.cache_mix", fake_cache)
    out = tmp_path / "sae"
    r = CliRunner().invoke(build_app(), ["sae", "train", "--model", "tiny", "--point", "resid_pre.1", "--tokens", "1000", "--out", str(out),
                                         "--cache-only", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (out / "activations" / "shard_000.safetensors").is_file() and not (out / "sae_weights.safetensors").exists()
