"""refusal-steer: find, explain and steer refusal in chat language models through their activations."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
