"""The documentation: README stays a front page, every link and included file exists, and the
config reference (docs/gen_config_reference.py, a mkdocs hook) covers every config key."""

from __future__ import annotations

import importlib.util
import json
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from rerankit.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generator():
    return _hook("gen_config_reference")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The text outside code blocks and code spans, where a link is a link."""
    return _CODE.sub("", _FENCE.sub("", text))


def _github_slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _nested_models(annotation) -> list[type[BaseModel]]:
    """Config sections inside a field's type, also behind Optional or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _nested_models(arg)]
    return []


def _config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        for nested in _nested_models(field.annotation):
            keys += _config_keys(nested, f"{key}.")
    return keys


@pytest.mark.smoke
def test_readme_is_a_front_page_of_at_most_300_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.smoke
def test_every_relative_link_of_readme_and_docs_leads_to_a_file():
    broken = []
    for page in _pages():
        for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


@pytest.mark.smoke
def test_readme_links_into_docs_name_headings_that_exist():
    broken = []
    for target in _LINK.findall(_prose(README.read_text(encoding="utf-8"))):
        path, _, anchor = target.partition("#")
        if not anchor or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        page = README.parent / path if path else README
        headings = re.findall(r"^#+ (.+)$", _FENCE.sub("", page.read_text(encoding="utf-8")), re.MULTILINE)
        if anchor not in {_github_slug(h) for h in headings}:
            broken.append(target)
    assert not broken, f"README links to headings that do not exist: {broken}"


@pytest.mark.smoke
def test_every_included_results_file_exists_with_the_lines_or_section_named():
    """`--8<-- "file"`, `"file:START:END"` or `"file:section"` (pymdownx.snippets, from the repo root)."""
    includes = [spec for page in _pages() for spec in _SNIPPET.findall(page.read_text(encoding="utf-8"))]
    assert includes, "the docs include no results file"
    for spec in includes:
        path, *where = spec.split(":")
        file = ROOT / path
        assert file.is_file(), f"{spec}: no such file"
        text = file.read_text(encoding="utf-8")
        if len(where) == 2:
            start, end = int(where[0]), int(where[1])
            lines = text.splitlines()
            assert 1 <= start <= end <= len(lines), f"{spec}: {path} has {len(lines)} lines"
            assert any(line.startswith("|") for line in lines[start - 1 : end]), f"{spec}: no table there"
        elif len(where) == 1:
            for edge in ("start", "end"):
                assert f"--8<-- [{edge}:{where[0]}]" in text, f"{spec}: no {edge} marker in {path}"


@pytest.mark.smoke
def test_config_reference_has_a_row_for_every_config_key_with_its_default_and_description():
    reference = _generator().render()
    rows = {}
    for line in reference.splitlines():
        match = re.match(r"^\| `([\w.]+)` \| (.*) \| (.*) \| (.*) \|$", line)
        if match:
            rows[match[1]] = match.groups()[1:]
    keys = _config_keys(TrainConfig)
    missing = [k for k in keys if k not in rows]
    assert not missing, f"config keys missing from the reference: {missing}"
    undescribed = [k for k in keys if not rows[k][2].strip()]
    assert not undescribed, (
        f"config keys without a description: {undescribed}; add a comment above the field in "
        "rerankit/config.py (or a pydantic description)"
    )
    assert rows["data.train"][1] == "required"
    assert rows["training.epochs"][1] == "`2`"
    assert rows["model.long_documents.max_windows"][0] == "int, ≥ 1, ≤ 1024"
    assert rows["loss.name"][0] == '`"margin"` or `"ranknet"` or `"listwise"` or `"bce"`'
    assert "A given validation file wins over valid_ratio." in rows["data.valid"][2]
    # qwen3's <Instruct> would be an HTML tag in the page
    assert "&lt;Instruct&gt;" in rows["model.prompt.instruction"][2]


@pytest.mark.smoke
def test_the_hook_puts_the_reference_where_the_page_holds_the_marker():
    generator = _generator()
    page = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert generator.MARKER in page
    built = generator.on_page_markdown(page, page=None, config=None, files=None)
    assert generator.MARKER not in built
    assert "| `training.learning_rate` |" in built
    assert generator.on_page_markdown("# other page\n") == "# other page\n"


@pytest.mark.smoke
def test_every_image_of_the_docs_is_a_file_or_a_plot_the_build_draws():
    drawn = {DOCS / site_path for site_path in _hook("gen_plots").PLOTS}
    missing = []
    for page in sorted(DOCS.rglob("*.md")):
        for target in _IMAGE.findall(_prose(page.read_text(encoding="utf-8"))):
            path = (page.parent / target).resolve()
            if not path.exists() and path not in drawn:
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, f"images neither in docs/ nor drawn by docs/gen_plots.py: {missing}"


@pytest.mark.smoke
def test_the_plots_draw_every_row_of_their_results_files():
    plots = _hook("gen_plots")
    results = ROOT / "benchmarks" / "results"
    seeds = json.loads((results / "quality_seeds.json").read_text(encoding="utf-8"))
    svg = plots.quality_seeds()
    assert svg.startswith("<?xml") and "<svg" in svg
    for domain, block in seeds.items():
        assert f"{domain}: NDCG@10" in svg
        for value in [*block["baselines"].values(), *(row["mean"] for row in block["rows"].values())]:
            assert f"{value:.4f}" in svg, f"{domain}: {value:.4f} is not drawn"
    speed = plots.inference()
    for row in json.loads((results / "inference_avx2.json").read_text(encoding="utf-8"))["rows"]:
        assert row["contender"] in speed
        assert f"{row['pairs_per_s']} (NDCG@10 {row['ndcg@10']})" in speed
