"""File names and format tags for saved SAEs, in one place (imported by io, training and the CLI)."""

from __future__ import annotations

#: The config file of an SAE directory (ours and SAELens's share the name).
CFG_FILENAME = "cfg.json"
#: The weights file of an SAE directory (ours and SAELens's share the name).
WEIGHTS_FILENAME = "sae_weights.safetensors"
#: Gemma Scope's single-file layout.
GEMMA_SCOPE_FILENAME = "params.npz"
#: Written next to a trained SAE: the training config and final metrics.
TRAINING_FILENAME = "training.json"
#: Sub-directory of a training output that holds step checkpoints.
CHECKPOINTS_DIRNAME = "checkpoints"
#: Pointer to the newest complete checkpoint (a JSON file, replaced atomically).
LATEST_CHECKPOINT_FILENAME = "latest.json"
#: Optimizer and trainer tensors inside a checkpoint.
TRAINER_TENSORS_FILENAME = "trainer_state.safetensors"
#: Scalars of the trainer inside a checkpoint (step, tokens, config).
TRAINER_STATE_FILENAME = "trainer_state.json"
#: Tag written into our cfg.json so loaders tell our layout from SAELens's.
FORMAT_TAG = "refusal_steer.sae/1"
#: Activation shards read by ``sae train --activations DIR``.
ACTIVATION_SHARD_GLOB = "*.safetensors"

__all__ = [
    "CFG_FILENAME",
    "WEIGHTS_FILENAME",
    "GEMMA_SCOPE_FILENAME",
    "TRAINING_FILENAME",
    "CHECKPOINTS_DIRNAME",
    "LATEST_CHECKPOINT_FILENAME",
    "TRAINER_TENSORS_FILENAME",
    "TRAINER_STATE_FILENAME",
    "FORMAT_TAG",
    "ACTIVATION_SHARD_GLOB",
]
