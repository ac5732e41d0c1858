"""Deterministic benchmark prompts (no dataset download): short instructions of varied length."""

from __future__ import annotations

_VERBS = ["Explain", "Describe", "Summarise", "Write a short story about", "List five facts about", "Give advice on",
          "Compare two views on", "Write a long essay about"]
_TOPICS = ["baking sourdough bread at home", "how vaccines train the immune system", "the history of the printing press",
           "learning a second language as an adult", "saving money on groceries", "how airplanes stay in the air",
           "the water cycle", "caring for a house plant", "the rules of chess", "why the sky is blue",
           "writing clean Python code", "the French revolution", "training for a marathon", "black holes",
           "composting kitchen waste", "how a bill becomes law in the United States", "the life of honey bees",
           "photosynthesis in simple words", "choosing a used car", "the causes of inflation",
           "how search engines rank pages", "keeping a journal", "the Roman empire", "volcanoes and plate tectonics",
           "meditation for beginners", "how electric motors work", "the benefits of sleep", "public speaking",
           "the invention of the telephone", "recycling plastics", "planning a vegetable garden", "origami"]


def bench_prompts(n: int) -> list[str]:
    """``n`` distinct prompts (verb x topic), cycling with a numbered suffix past 256."""
    out = []
    i = 0
    while len(out) < n:
        verb = _VERBS[i % len(_VERBS)]
        topic = _TOPICS[(i // len(_VERBS)) % len(_TOPICS)]
        suffix = "" if i < len(_VERBS) * len(_TOPICS) else f" (variant {i})"
        out.append(f"{verb} {topic}.{suffix}")
        i += 1
    return out
