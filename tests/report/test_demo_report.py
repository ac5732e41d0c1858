"""The demo report names what was run and shows completions literally, in Markdown and in a browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from refusal_steer.report.demo_report import write_demo_report
from refusal_steer.report.render import code_block, code_span, markdown_to_html

from .conftest import SHA, completions_by_condition, make_metrics, write_run


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n### ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_report_names_model_data_decoding_time_and_judge(demo_run):
    run_dir, metrics = demo_run
    text = write_demo_report(run_dir, metrics).read_text()
    setup = text[: text.index("## Conditions")]
    assert "Qwen2.5-Coder-0.5B-Instruct" in setup and "`default`" in setup and SHA in setup
    assert "`advbench`" in setup and "AdvBench harmful behaviours" in setup and "`harmless`" in setup
    assert "**train**: 128 prompts per class" in setup and "**validation**: 32 prompts per class" in setup
    assert "KL filter on 32 harmless validation prompts (the refinement's KL filter on 128)" in setup
    assert "**held-out test**: 8 prompts per class" in setup
    assert "greedy" in setup and "**24 new tokens**" in setup and "mid-sentence" in setup
    assert "12 min 34 s" in setup  # seconds_this_invocation
    assert "10 min 2 s" in setup and "2 min 55 s" in setup and "1 min 35 s" in setup  # stage stamps summed
    assert "`substring@v2`" in setup and "recall **0.714**" in setup and "accuracy **0.810**" in setup
    assert "105 human-labelled" in setup and "**lower bounds**" in setup and "docs/evaluation.md" in setup


def test_report_says_activation_addition_adds_another_direction(demo_run):
    run_dir, metrics = demo_run
    text = write_demo_report(run_dir, metrics).read_text()
    conditions = text[text.index("## Conditions"): text.index("## Refusal rates")]
    assert "**a different direction from the ablated one**: `resid_pre.19`, position -1 (ablation uses `resid_pre.14`, position -2)" \
        in conditions
    assert "**Activation addition adds a different direction from the one ablated:**" in conditions
    assert "| harmless | add a different direction (resid_pre.19, position -1) | 75.0% |" in text
    assert "the selected direction after 6 gradient steps, cosine 0.93" in conditions


def test_report_says_when_activation_addition_adds_the_ablated_direction(tmp_path):
    completions = completions_by_condition()
    run_dir = write_run(tmp_path / "run", completions, heatmap=False)
    text = write_demo_report(run_dir, make_metrics(completions, actadd_same=True)).read_text()
    assert "different direction" not in text
    assert "the ablated direction, `resid_pre.14`, position -2" in text and "add direction (the ablated one)" in text


def test_examples_show_flips_and_a_surviving_refusal_per_condition(demo_run):
    run_dir, metrics = demo_run
    text = write_demo_report(run_dir, metrics).read_text()
    ablation = _section(text, "### Harmful prompts: baseline vs ablate direction")
    assert "#### 1. Refusal removed" in ablation and "#### 4. Refusal survives" in ablation
    assert "refusal removed: 6; refusal survives: 2" in ablation
    assert "I cannot provide instructions for that." in ablation  # the surviving refusal's own text
    refined = _section(text, "### Harmful prompts: baseline vs ablate refined direction")
    assert "Refusal survives" in refined and "harmful thing number 7" in refined
    actadd = _section(text, "### Harmless prompts: baseline vs add a different direction")
    assert "Refusal induced" in actadd and "Still answered (no refusal induced)" in actadd
    assert "cut off at the 24-token limit" in text and "ended by the model after 9 tokens" in text


def test_examples_say_when_no_refusal_survives(tmp_path):
    completions = completions_by_condition()
    completions["ablation_harmful"] = [{**row, "refused": False, "text": "Sure, here is how"} for row in completions["ablation_harmful"]]
    run_dir = write_run(tmp_path / "run", completions, heatmap=False)
    text = write_demo_report(run_dir, make_metrics(completions)).read_text()
    ablation = _section(text, "### Harmful prompts: baseline vs ablate direction")
    assert "Refusal survives" not in ablation.split("There is no")[1] and "There is no *refusal survives* example" in ablation


def test_sizes_are_the_prompts_used(demo_run):
    run_dir, metrics = demo_run
    fitted = {"harmful_train": ["a"] * 6, "harmless_train": ["b"] * 6, "harmful_val": ["c"] * 2, "harmless_val": ["d"] * 3,
              "harmless_kl": ["e"] * 6}
    (run_dir / "direction" / "prompts.json").write_text(json.dumps(fitted))
    setup = write_demo_report(run_dir, metrics).read_text().split("## Conditions")[0]
    assert "**train**: 6 prompts per class" in setup and "**validation**: 2 harmful and 3 harmless prompts" in setup
    assert "KL filter on 6 harmless validation prompts" in setup


def test_run_time_falls_back_without_stamps_and_notes_a_resume(tmp_path):
    completions = completions_by_condition()
    run_dir = write_run(tmp_path / "run", completions, heatmap=False)
    metrics = make_metrics(completions)
    resumed = write_demo_report(run_dir, {**metrics, "seconds_this_invocation": 31.0}).read_text()
    assert "31 s for the invocation" in resumed and "resumed a folder" in resumed
    shutil.rmtree(run_dir / ".stages")
    shutil.rmtree(run_dir / "direction" / ".stages")
    bare = write_demo_report(run_dir, {k: v for k, v in metrics.items() if k != "seconds_this_invocation"}).read_text()
    assert "**Run time:** not recorded." in bare and "selection_heatmap.png" not in bare
    total = write_demo_report(run_dir, {**metrics, "seconds_total": 3725}).read_text()
    assert "1 h 2 min 5 s in all" in total


def test_other_judges_get_no_substring_figures(demo_run):
    run_dir, metrics = demo_run
    results = {k: ({**v, "judge": "classifier@abc"} if "judge" in v else v) for k, v in metrics["results"].items()}
    text = write_demo_report(run_dir, {**metrics, "results": results}).read_text()
    assert "0.714" not in text and "`classifier@abc`" in text and "refusal-labels" in text


def test_capped_ablation_rows_under_either_name(tmp_path):
    completions = completions_by_condition()
    completions["cap_harmful"] = [{**row, "refused": i % 2 == 0} for i, row in enumerate(completions["ablation_harmful"])]
    run_dir = write_run(tmp_path / "run", completions, heatmap=False)
    metrics = make_metrics(completions)
    cap = {"point": "resid_pre.12", "position": -3, "layer": 12, "kl_threshold": 0.1,
           "table": [{"position": -3, "layer": 12, "bypass": -1.5, "kl": 0.05, "status": "selected"}]}
    metrics["direction"]["cap"] = cap
    text = write_demo_report(run_dir, metrics).read_text()
    assert "| capped ablation (to harmless level) | lowers the projection" in text and "`resid_pre.12`, position -3" in text
    assert "### Harmful prompts: baseline vs capped ablation" in text
    legacy = {**metrics, "direction": {**metrics["direction"], "cap": None, "clamp": cap}}
    (run_dir / "completions" / "cap_harmful.jsonl").rename(run_dir / "completions" / "clamp_harmful.jsonl")
    legacy["results"] = {("clamp_harmful" if k == "cap_harmful" else k): v for k, v in metrics["results"].items()}
    assert "### Harmful prompts: baseline vs capped ablation" in write_demo_report(run_dir, legacy).read_text()


def test_html_escapes_model_output_and_renders_markdown(demo_run):
    run_dir, metrics = demo_run
    write_demo_report(run_dir, metrics)
    page = (run_dir / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(" in page and "&lt;|im_end|&gt;" in page
    assert "<table>" in page and "<ul>\n<li>" in page and "<blockquote>" in page and "<strong>Model:</strong>" in page
    assert '<img alt="refusal rates" src="refusal_rates.png"' in page and "<style>" in page


def test_code_helpers_survive_backticks_and_fences():
    assert code_span("a `b` c") == "``a `b` c``" and code_span("`x") == "`` `x ``"
    block = code_block("x\n```\ny\n````")
    assert block.startswith("`````text\n") and block.endswith("\n`````")
    page = markdown_to_html(f"{code_span('<i>`</i>')}\n\n{block}\n\n<b>raw</b>\n", "t")
    assert "<code>&lt;i&gt;`&lt;/i&gt;</code>" in page and "```\ny\n````" in page and "&lt;b&gt;raw&lt;/b&gt;" in page


# --- the page in a real browser --------------------------------------------------------------------------

_CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def _chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    command = [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


class _Dom(HTMLParser):
    """Elements with their ancestors, and text outside ``code``/``pre`` (where Markdown syntax must not survive)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.elements: list[tuple[str, tuple[str, ...], dict]] = []
        self.prose: list[str] = []
        self.pre: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, tuple(self.stack), dict(attrs)))
        if tag == "pre":
            self.pre.append("")
        if tag not in {"img", "meta", "br", "hr", "link", "input"}:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        if "pre" in self.stack:
            self.pre[-1] += data
        elif "code" not in self.stack and "style" not in self.stack and "title" not in self.stack:
            self.prose.append(data)


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_report_html_in_headless_chromium(demo_run, tmp_path):
    from PIL import Image  # a matplotlib dependency, so always there

    run_dir, metrics = demo_run
    write_demo_report(run_dir, metrics)
    url = (run_dir / "report.html").resolve().as_uri()
    dom = _Dom()
    dom.feed(_chromium("--dump-dom", url, tmp_path=tmp_path).stdout)
    tags = [tag for tag, _, _ in dom.elements]
    assert "script" not in tags  # the completion's <script> is text, not an element
    assert tags.count("table") == 2 and "th" in tags and "td" in tags
    assert all("ul" in parents or "ol" in parents for tag, parents, _ in dom.elements if tag == "li") and "li" in tags
    prose = "".join(dom.prose)
    assert "**" not in prose and "`" not in prose and "<li>" not in prose
    assert any('<script>alert("pwned")</script> with **bold** and `ticks`' in text for text in dom.pre)
    images = [attrs["src"] for tag, _, attrs in dom.elements if tag == "img"]
    assert images == ["refusal_rates.png", "direction/selection_heatmap.png"] and all((run_dir / src).is_file() for src in images)

    shot = tmp_path / "report.png"
    _chromium("--window-size=1280,4000", f"--screenshot={shot}", url, tmp_path=tmp_path)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 4000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank page
    white = sum(count for count, rgb in colours if min(rgb) >= 250)
    assert white < 0.97 * 1280 * 4000
    present = {rgb for _, rgb in colours}
    assert (214, 39, 40) in present and (148, 103, 189) in present  # the bar chart's ablation/refined bars: the image loaded
