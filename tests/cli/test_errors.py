"""The real ``refusal-steer`` console script on bad options and on Ctrl-C (subprocesses, no hub, no big model).

Typer >= 0.29 bundles click as ``typer._click`` (its exceptions are not ``click.ClickException``) and, without
standalone mode, turns Ctrl-C into a *returned* exit code 130: these check the exit status and what is printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from refusal_steer.cli import INTERRUPTED_MESSAGE
from refusal_steer.sae.shards import write_shard
from refusal_steer.sae.training import latest_checkpoint

SCRIPT = shutil.which("refusal-steer") or str(Path(sys.executable).with_name("refusal-steer"))


USAGE_ERRORS = {
    "unknown option": (["eval", "--bogus"], "Error: No such option"),  # ": --bogus" (typer's click), " '--bogus'." (click)
    "missing required option": (["eval", "--model", "default", "--dataset", "advbench"], "Error: Missing option '--out'"),
    "bad choice": (["eval", "--model", "default", "--dataset", "advbench", "--out", "x.json", "--metric", "mmul"],
                   "Error: Invalid value for '--metric'"),
}


def test_usage_errors_print_usage_and_exit_2_without_a_traceback(tmp_path):
    assert os.path.exists(SCRIPT), "the refusal-steer console script is not installed (pip install -e .)"
    # All at once: each pays the interpreter's start-up, which dominates.
    procs = {name: subprocess.Popen([SCRIPT, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, _) in USAGE_ERRORS.items()}
    for name, proc in procs.items():
        args = USAGE_ERRORS[name][0]
        stdout, stderr = proc.communicate(timeout=300)  # start-up is ~4 s of CPU each; a loaded 2-core box needs the margin
        assert proc.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr + stdout, name
        lines = stderr.splitlines()
        assert lines[0] == "Usage: refusal-steer eval [OPTIONS]", (name, stderr)
        assert "Try 'refusal-steer eval --help' for help." in lines, (name, stderr)
        assert any(line.startswith(USAGE_ERRORS[name][1]) for line in lines), (name, stderr)
        assert "--bogus" not in args or "--bogus" in lines[-1], stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_prints_one_line_keeps_checkpoints_and_exits_130(tmp_path):
    """A real, endless SAE training on a tiny shard, interrupted once its first checkpoint is written."""
    acts, out = tmp_path / "acts", tmp_path / "sae"
    acts.mkdir()
    write_shard(acts / "shard_000.safetensors", torch.randn(64, 8))
    args = ["sae", "train", "--activations", str(acts), "--out", str(out), "--tokens", str(10**12), "--width", "16",
            "--k", "2", "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]
    # A shell's background job (or CI runner) may start us with SIGINT ignored, which children inherit; the command
    # must see Ctrl-C the way a terminal delivers it.
    proc = subprocess.Popen([SCRIPT, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 90
        while latest_checkpoint(out) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "sae train wrote no checkpoint in 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == INTERRUPTED_MESSAGE
    assert INTERRUPTED_MESSAGE == "interrupted; finished stages are kept and a rerun resumes from them"
    assert latest_checkpoint(out) is not None  # what was finished is still there for the rerun
