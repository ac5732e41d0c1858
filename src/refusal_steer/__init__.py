"""refusal-steer: find, explain and steer refusal in chat language models through their activations.

The names a researcher needs, in one place::

    import refusal_steer as rs

    lm = rs.load_model("default")
    steer = rs.parse_steer("ablate:runs/demo/direction", lm)     # what `--steer ablate:DIR` applies
    print(rs.generate(lm, ["How do I pick a lock?"], steer)[0].text)

Importing the package also registers every intervention kind, resource type and short form, so steer
files and ``--steer`` values that name them resolve wherever they are read.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .data import load_dataset
from .directions import load_ablation_direction, load_direction
from .directions.diff_in_means import difference_in_means
from .evaluation import evaluate_kl, evaluate_refusal
from .evaluation.record import ResultRecord
from .features import FeatureSet, load_features
from .generation import generate
from .hooks import HookPoint, apply, record
from .interventions import (
    Ablate,
    Add,
    Cosine,
    Gate,
    Probe,
    Projection,
    ProjectionCap,
    SetProjection,
    all_layers_ablation,
    fingerprint,
    load_steer_file,
    parse_steer,
    residual_writes,
    save_steer_file,
)
from .models import load_model
from .runs.direction import DirectionConfig, find_direction
from .sae import LatentAdd, LatentClamp, SaeLatent, SaeSplice, load_sae

__all__ = [
    "Ablate",
    "Add",
    "Cosine",
    "DirectionConfig",
    "Gate",
    "HookPoint",
    "Probe",
    "Projection",
    "ProjectionCap",
    "ResultRecord",
    "SaeLatent",
    "SaeSplice",
    "FeatureSet",
    "load_features",
    "LatentAdd",
    "LatentClamp",
    "SetProjection",
    "__version__",
    "all_layers_ablation",
    "apply",
    "difference_in_means",
    "evaluate_kl",
    "evaluate_refusal",
    "find_direction",
    "fingerprint",
    "generate",
    "load_ablation_direction",
    "load_dataset",
    "load_direction",
    "load_model",
    "load_sae",
    "load_steer_file",
    "parse_steer",
    "record",
    "residual_writes",
    "save_steer_file",
]
