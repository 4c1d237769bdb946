"""The documentation is tested: its examples run, its tables match the lab's result
files, its figures come from the figure script, and the site builds with --strict.

Every ```python block in docs/**/*.md runs, each page's blocks in order in one
namespace, in a temporary working directory, on every backend. A block is skipped
only when the line before its fence is ``<!-- no-test -->`` (for commands that
cannot run in a test, such as multi-process launches). The site build runs on the
TensorFlow backend only (it does not depend on the backend).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->"
MAX_FIGURE_BYTES = 200 * 1024

_OPEN = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the first code line
    code: str
    skipped: bool


def extract_python_blocks(text: str) -> list[Block]:
    """The fenced ```python (or ```py) blocks of a Markdown text, dedented to their fence."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match["indent"], match["lang"]
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start, i = i + 1, i + 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if lang in ("python", "py"):
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[start:i]]
            blocks.append(Block(start + 1, "\n".join(body) + "\n", previous == NO_TEST))
        i += 1
    return blocks


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if extract_python_blocks(p.read_text(encoding="utf-8")))


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_scripts_{name}", DOCS / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the examples


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    name = str(page.relative_to(ROOT))
    namespace = {"__name__": "__docs__", "__file__": name}
    for block in extract_python_blocks(page.read_text(encoding="utf-8")):
        if block.skipped:
            continue
        # Pad with blank lines so that tracebacks give the line number in the page.
        code = compile("\n" * (block.line - 1) + block.code, name, "exec")
        try:
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
        except Exception as exc:
            raise AssertionError(f"{name}: the example starting at line {block.line} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
    keras.backend.clear_session()


def test_concepts_page_has_examples():
    # Guards the extractor: a silent change in fence syntax would test nothing.
    assert len(extract_python_blocks((DOCS / "concepts.md").read_text(encoding="utf-8"))) >= 6


def test_extract_python_blocks():
    text = "\n".join([
        "# Title",
        "```python",
        "a = 1",
        "```",
        "```bash",
        "echo no",
        "```",
        "<!-- no-test -->",
        "",
        "```python",
        "launch()",
        "```",
        "- item",
        "",
        "    ```py",
        "    if a:",
        "        b = 2",
        "    ```",
    ])
    blocks = extract_python_blocks(text)
    assert [(b.line, b.code, b.skipped) for b in blocks] == [
        (3, "a = 1\n", False),
        (11, "launch()\n", True),
        (16, "if a:\n    b = 2\n", False),
    ]


# ------------------------------------------------------------------ numbers and figures


def test_lab_tables_match_the_result_files():
    lab_tables = _load_script("lab_tables")
    stale = lab_tables.update(check=True)
    assert not stale, (f"docs/choosing.md: the tables {stale} differ from docs/lab/*.json; "
                       "run `python docs/scripts/lab_tables.py`")


def _lab(name: str) -> dict[str, dict]:
    """docs/lab/<name>.json's rows by label, accuracies as the tables show them (percent, 2 decimals)."""
    path = DOCS / "lab" / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing, but docs/choosing.md quotes it")
    rows = {}
    for row in json.loads(path.read_text())["rows"]:
        for key in ("accuracy", "test_accuracy", "train_mode_accuracy"):
            stat = row.get(key) or {}
            if stat.get("n"):
                mean, half = 100 * stat["mean"], 100 * (stat["ci95"] or 0.0)
                row[key] = (round(mean, 2), round(mean - half, 2), round(mean + half, 2))
        rows[row["label"]] = row
    return rows


def _overlap(a, b) -> bool:
    return a[1] <= b[2] and b[1] <= a[2]


def test_choosing_page_text_matches_the_lab():
    """Every number in the prose of docs/choosing.md, recomputed from docs/lab/*.json."""
    text = " ".join(re.sub(r"<!-- lab-table: .*?<!-- /lab-table -->", "",
                           (DOCS / "choosing.md").read_text(encoding="utf-8"), flags=re.S).split())
    said = []

    def says(fragment: str):
        said.append(fragment)
        assert fragment in text, f"docs/choosing.md should say {fragment!r} (from docs/lab/)"

    # The classic comparison.
    compare = _lab("compare")
    acc = {k: r["accuracy"] for k, r in compare.items()}
    low, high = min(a[0] for a in acc.values()), max(a[0] for a in acc.values())
    says(f"within {high - low:.2f} points of each other ({low:.2f} to {high:.2f} %)")
    assert all(_overlap(a, b) for a in acc.values() for b in acc.values())
    says(f"no normalization at all ({acc['none'][0]:.2f} %)")
    assert all(_overlap(acc["none"], a) for a in acc.values())
    assert compare["LayerNorm"]["params_trainable"] - compare["GroupNorm"]["params_trainable"] == 32
    says("LayerNorm has 32 parameters more")

    # The tutorials' protocol.
    tutorial = _lab("compare-tutorial")
    run = {k: r["accuracy"] for k, r in tutorial.items()}
    for label in ("LayerNorm", "none", "GroupNorm", "BatchNorm", "InstanceNorm"):
        says(f"{label} ({run[label][0]:.2f} %)".replace("none (", "no norm ("))
    assert not any(_overlap(run[a], run[b]) for a in ("LayerNorm", "none") for b in ("GroupNorm", "BatchNorm"))
    assert max(run, key=lambda k: run[k][2] - run[k][1]) == "InstanceNorm"  # "varies most between seeds"
    held = {k: r["test_accuracy"] for k, r in tutorial.items()}
    low, high = min(a[0] for a in held.values()), max(a[0] for a in held.values())
    says(f"the spread shrinks to {high - low:.2f} points ({low:.2f} to {high:.2f} %)")
    assert all(_overlap(a, b) for a in held.values() for b in held.values())

    # Batch size, tutorial net.
    sweep = _lab("batch-size")
    bn, gn = (lambda b: sweep[f"BN b={b}"]), (lambda b: sweep[f"GN b={b}"])
    says(f"batch norm {bn(32)['accuracy'][0]:.2f} to {bn(2)['accuracy'][0]:.2f} %, "
         f"group norm {gn(32)['accuracy'][0]:.2f} to {gn(2)['accuracy'][0]:.2f} %")
    assert bn(2)["accuracy"][0] > bn(32)["accuracy"][0] and gn(2)["accuracy"][0] > gn(32)["accuracy"][0]
    assert bn(2)["steps"]["mean"] == 16 * bn(32)["steps"]["mean"]
    says("with 16 times as many steps")
    assert all(abs(bn(b)["accuracy"][0] - bn(b)["train_mode_accuracy"][0]) <= 0.1 for b in (32, 16, 8, 4, 2))
    says("agree within 0.1 point at every batch size")

    # Batch size, deep net.
    deep = _lab("batch-size-deep")
    bn32, bn2 = deep["BN b=32"]["accuracy"], deep["BN b=2"]["accuracy"]
    gn32, gn2 = deep["GN b=32"]["accuracy"], deep["GN b=2"]["accuracy"]
    says(f"batch norm goes from {bn32[0]:.2f} to {bn2[0]:.2f} % and group norm from {gn32[0]:.2f} to {gn2[0]:.2f} %")
    says(f"({bn32[0] - bn2[0]:.2f} against {gn32[0] - gn2[0]:.2f} points)")
    assert bn32[0] - bn2[0] > gn32[0] - gn2[0] and _overlap(bn2, gn2)
    says(f"still loses {gn32[0] - gn2[0]:.2f} points")

    # Groups.
    groups = {int(r["x"]): r["accuracy"] for r in _lab("groups").values()}
    assert min(groups, key=lambda g: groups[g][0]) == 1
    assert groups[5][0] == groups[10][0]
    says(f"G = 1 is the lowest ({groups[1][0]:.2f} %), {groups[5][0] - groups[1][0]:.2f} points below G = 5 and G = 10")
    assert not _overlap(groups[1], groups[10]) and _overlap(groups[1], groups[2]) and _overlap(groups[1], groups[5])
    assert min(groups, key=lambda g: groups[g][2] - groups[g][1]) == 10  # "very narrow"
    upper = [groups[g][0] for g in groups if g >= 2]
    says(f"from 2 groups up the means are within {max(upper) - min(upper):.2f} points")

    # Combinations.
    combos = {k: r["accuracy"] for k, r in _lab("combos").items()}
    low, high = min(a[0] for a in combos.values()), max(a[0] for a in combos.values())
    says(f"All four are within {high - low:.2f} points ({low:.2f} to {high:.2f} %)")
    assert all(_overlap(a, b) for a in combos.values() for b in combos.values())


def test_figures_come_from_the_figure_script_and_are_small():
    make_figures = _load_script("make_figures")
    pngs = sorted((DOCS / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == set(make_figures.FIGURES)
    for png in pngs:
        assert png.stat().st_size < MAX_FIGURE_BYTES, f"{png.name}: {png.stat().st_size} bytes"


def test_every_figure_caption_names_its_command():
    figure = re.compile(r'<figure markdown="span">\s*!\[[^\]]*\]\(([^)]+)\)\s*<figcaption>(.*?)</figcaption>', re.S)
    images = re.compile(r"!\[[^\]]*\]\(((?:\.\./)*(?:figures|lab)/[^)]+\.png)\)")
    for page in sorted(DOCS.glob("*.md")):  # docs/lab/ holds the report's own pages
        text = page.read_text(encoding="utf-8")
        captioned = {src: caption for src, caption in figure.findall(text)}
        for src in images.findall(text):
            assert src in captioned, f"{page.name}: {src} has no <figcaption>"
            caption = " ".join(captioned[src].split())
            if src.startswith("figures/"):
                assert f"docs/scripts/make_figures.py {Path(src).stem}" in caption, (page.name, src)
            else:
                assert "<code>normlab " in caption, (page.name, src)


@pytest.mark.once  # the figures do not depend on the backend
def test_figure_script_makes_a_figure(tmp_path):
    make_figures = _load_script("make_figures")
    assert make_figures.main(["cube-group-4-of-8", "--out", str(tmp_path)]) == 0
    png = tmp_path / "cube-group-4-of-8.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < MAX_FIGURE_BYTES


# ------------------------------------------------------------------ the site


@pytest.mark.once  # the site does not depend on the backend
@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (f"mkdocs build --strict failed (needs pip install -e '.[docs]'):\n"
                                    f"{result.stdout}\n{result.stderr}")
    for page in ("index.html", "concepts/index.html", "choosing/index.html", "api/layers/index.html"):
        assert (tmp_path / "site" / page).exists(), page
    api = (tmp_path / "site" / "api" / "layers" / "index.html").read_text(encoding="utf-8")
    assert "normalizes each sample over groups of channels" in api  # a docstring, rendered
