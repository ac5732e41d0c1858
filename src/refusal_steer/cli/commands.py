"""Import every sub-command module so each registers itself on the root app."""

from __future__ import annotations

# Each module below adds its commands to ``refusal_steer.cli.app`` at import time.
from . import models_cmd  # noqa: F401
from . import data_cmd  # noqa: F401
from . import sae_cmd  # noqa: F401
from . import eval_cmd  # noqa: F401
from . import attack_cmd  # noqa: F401
from . import gen_cmd  # noqa: F401
from . import direction_cmd  # noqa: F401
from . import heads_cmd  # noqa: F401
from . import demo_cmd  # noqa: F401
from . import run_cmd  # noqa: F401
from . import features_cmd  # noqa: F401
from . import probe_cmd  # noqa: F401
from . import compare_cmd  # noqa: F401
from . import serve_cmd  # noqa: F401
from . import harden_cmd  # noqa: F401
