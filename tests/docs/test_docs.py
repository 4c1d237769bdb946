"""The documentation is tested: its examples run, its tables match the lab's result
files, its figures come from the figure script, and the site builds with --strict.

Every ```python block in docs/**/*.md runs, each page's blocks in order in one
namespace, in a temporary working directory, on every backend. A block is skipped
only when the line before its fence is ``<!-- no-test -->`` (for commands that
cannot run in a test, such as multi-process launches). The site build runs on the
TensorFlow backend only (it does not depend on the backend).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import pytest

from tests._optional import skip_if_missing
from tests.docs._scripts import load_script

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
            skip_if_missing(exc, f"{name}'s example at line {block.line}")
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
    lab_tables = load_script("lab_tables")
    stale = lab_tables.update(check=True)
    assert not stale, (f"docs/choosing.md: the tables {stale} differ from docs/lab/*.json; "
                       "run `python docs/scripts/lab_tables.py`")


def _lab(name: str) -> dict[str, dict]:
    """docs/lab/<name>.json's rows by label, accuracies as the tables show them
    (percent, 2 decimals), paired differences as ``(mean, low, high)`` in points."""
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
        paired = row.get("paired")
        row["paired"] = paired and tuple(round(100 * paired[k], 2) for k in ("mean", "low", "high"))
        rows[row["label"]] = row
    return rows


def _ab(name: str) -> list[dict]:
    return json.loads((DOCS / "lab" / f"{name}.json").read_text())["ab"]


def _overlap(a, b) -> bool:
    return a[1] <= b[2] and b[1] <= a[2]


def _excludes_zero(paired) -> bool:
    return paired is not None and (paired[1] > 0 or paired[2] < 0)


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def test_choosing_page_text_matches_the_lab():
    """Every number in the prose of docs/choosing.md, recomputed from docs/lab/*.json."""
    text = " ".join(re.sub(r"<!-- lab-table: .*?<!-- /lab-table -->", "",
                           (DOCS / "choosing.md").read_text(encoding="utf-8"), flags=re.S).split())

    def says(fragment: str):
        assert fragment in text, f"docs/choosing.md should say {fragment!r} (from docs/lab/)"

    def spread(values, what="points"):
        low, high = min(a[0] for a in values), max(a[0] for a in values)
        return f"{high - low:.2f} {what} ({low:.2f} to {high:.2f} %)"

    # The classic comparison.
    compare = _lab("compare")
    acc = {k: r["accuracy"] for k, r in compare.items()}
    says(f"within {spread(acc.values())}".replace(" points (", " points of each other ("))
    assert all(_overlap(a, b) for a in acc.values() for b in acc.values())
    says(f"no normalization at all ({acc['none'][0]:.2f} %)")
    assert all(_overlap(acc["none"], a) for a in acc.values())
    assert [k for k, r in compare.items() if _excludes_zero(r["paired"])] == ["none"]
    m, lo, hi = compare["none"]["paired"]
    says(f"({_signed(m)} points, interval {_signed(lo)} to {_signed(hi)}, uncorrected for the four comparisons)")
    assert m > 0
    assert compare["LayerNorm"]["params_trainable"] - compare["GroupNorm"]["params_trainable"] == 32
    says("LayerNorm has 32 parameters more")

    # The tutorials' protocol, and Keras' layers on the same runs.
    tutorial = _lab("compare-tutorial")
    run = {k: r["accuracy"] for k, r in tutorial.items()}
    for label in ("LayerNorm", "none", "GroupNorm", "BatchNorm", "InstanceNorm"):
        says(f"{label} ({run[label][0]:.2f} %)".replace("none (", "no norm ("))
    assert not any(_overlap(run[a], run[b]) for a in ("LayerNorm", "none") for b in ("GroupNorm", "BatchNorm"))
    assert max(run, key=lambda k: run[k][2] - run[k][1]) == "InstanceNorm"  # "varies most between seeds"
    says(f"the spread shrinks to {spread([r['test_accuracy'] for r in tutorial.values()])}")
    ab = _ab("compare-tutorial")
    assert all(r["identical_4dp"] == r["diff"]["n"] and r["params_main"] == r["params_other"] for r in ab)
    says(f"every one of the {sum(r['diff']['n'] for r in ab)} runs gave normlab's accuracy to the fourth decimal")

    # Batch size, epochs fixed, tutorial net.
    sweep = _lab("batch-size")
    bn, gn = (lambda b: sweep[f"BN b={b}"]), (lambda b: sweep[f"GN b={b}"])
    says(f"batch norm {bn(32)['accuracy'][0]:.2f} to {bn(2)['accuracy'][0]:.2f} %, "
         f"group norm {gn(32)['accuracy'][0]:.2f} to {gn(2)['accuracy'][0]:.2f} %")
    assert bn(2)["accuracy"][0] > bn(32)["accuracy"][0] and gn(2)["accuracy"][0] > gn(32)["accuracy"][0]
    assert bn(2)["steps"]["mean"] == 16 * bn(32)["steps"]["mean"]
    says("with 16 times as many steps")
    assert not any(_excludes_zero(gn(b)["paired"]) for b in (32, 16, 8, 4, 2))
    says("paired by seed group norm and batch norm are within the noise of each other at every batch size")
    modes = max(abs(bn(b)["accuracy"][0] - bn(b)["train_mode_accuracy"][0]) for b in (32, 16, 8, 4, 2))
    says(f"agree within {modes:.2f} points at every batch size")

    # Batch size, epochs fixed, deep net.
    deep = _lab("batch-size-deep")
    bn32, bn2 = deep["BN b=32"]["accuracy"], deep["BN b=2"]["accuracy"]
    gn32, gn2 = deep["GN b=32"]["accuracy"], deep["GN b=2"]["accuracy"]
    says(f"batch norm goes from {bn32[0]:.2f} to {bn2[0]:.2f} % and group norm from {gn32[0]:.2f} to {gn2[0]:.2f} %")
    assert round(bn32[0] - bn2[0], 2) == round(gn32[0] - gn2[0], 2)
    says(f"{bn32[0] - bn2[0]:.2f} points each")
    assert not any(_excludes_zero(deep[f"GN b={b}"]["paired"]) for b in (32, 16, 8, 4, 2))
    says("paired by seed, group norm is within the noise of batch norm at every batch size")

    # Batch size, steps fixed.
    steps = _lab("batch-size-steps1875")
    bn, gn = (lambda b: steps[f"BN b={b}"]), (lambda b: steps[f"GN b={b}"])
    assert bn(2)["accuracy"][0] < bn(32)["accuracy"][0] and gn(2)["accuracy"][0] < gn(32)["accuracy"][0]
    says(f"batch norm from {bn(32)['accuracy'][0]:.2f} to {bn(2)['accuracy'][0]:.2f} %, group norm from "
         f"{gn(32)['accuracy'][0]:.2f} to {gn(2)['accuracy'][0]:.2f} %")
    assert [b for b in (32, 16, 8, 4, 2) if _excludes_zero(gn(b)["paired"])] == [8]
    m, lo, hi = gn(8)["paired"]
    says(f"only at batch 8 ({_signed(m)} points, interval {_signed(lo)} to {_signed(hi)}, one of five")
    deep = _lab("batch-size-deep-steps625")
    bn, gn = (lambda b: deep[f"BN b={b}"]), (lambda b: deep[f"GN b={b}"])
    says(f"batch norm from {bn(32)['accuracy'][0]:.2f} to {bn(2)['accuracy'][0]:.2f} %, group norm from "
         f"{gn(32)['accuracy'][0]:.2f} to {gn(2)['accuracy'][0]:.2f} %")
    close = max(abs(gn(b)["accuracy"][0] - bn(b)["accuracy"][0]) for b in (32, 16, 8))
    says(f"From batch 32 to 8 the two are within {close:.2f} points")
    (m4, lo4, hi4), (m2, lo2, hi2) = gn(4)["paired"], gn(2)["paired"]
    says(f"at batch 4 group norm is {m4:.2f} points ahead and at batch 2 {m2:.2f} points ahead")
    says(f"({lo4:.2f} to {_signed(hi4)} and {lo2:.2f} to {_signed(hi2)}) include zero")
    assert not _excludes_zero(gn(4)["paired"]) and not _excludes_zero(gn(2)["paired"]) and m2 > m4 > 0

    # Groups.
    groups = _lab("groups")
    acc = {int(r["x"]): r["accuracy"] for r in groups.values()}
    says(f"All four settings are within {spread(acc.values())}")
    assert all(_overlap(a, b) for a in acc.values() for b in acc.values())
    assert not any(_excludes_zero(r["paired"]) for r in groups.values())

    # Combinations: the tutorial's four models, both protocols.
    combos = _lab("combos")
    acc = {k: r["accuracy"] for k, r in combos.items()}
    says(f"All four are within {spread(acc.values())}")
    assert all(_overlap(a, b) for a in acc.values() for b in acc.values())
    assert not any(_excludes_zero(r["paired"]) for r in combos.values())
    assert [r["params_trainable"] for r in combos.values()] == [739_728, 739_728, 739_748, 739_748]
    combos = _lab("combos-tutorial")
    (m, lo, hi), (m2, lo2, hi2), (m3, lo3, hi3) = (combos[k]["paired"] for k in ("GN only", "BN then GN",
                                                                                  "GN then BN"))
    says(f"GN only is ahead of BN only by {m:.2f} points (paired interval {_signed(lo)} to {_signed(hi)})")
    says(f"BN then GN behind it by {-m2:.2f} ({lo2:.2f} to {hi2:.2f})")
    says(f"GN then BN's interval ({lo3:.2f} to {_signed(hi3)}) touches zero")
    assert _excludes_zero(combos["GN only"]["paired"]) and _excludes_zero(combos["BN then GN"]["paired"])
    held = [r["test_accuracy"] for r in combos.values()]
    says(f"all four are within {spread(held)} and every interval overlaps every other")
    assert all(_overlap(a, b) for a in held for b in held)
    ab = _ab("combos-tutorial")
    same, runs = sum(r["identical_4dp"] for r in ab), sum(r["diff"]["n"] for r in ab)
    says(f"in {same} of the {runs} runs to the fourth decimal, and in the last to within "
         f"{100 * max(r['max_abs_diff'] for r in ab):.2f} points")
    assert runs - same == 1


def test_figures_come_from_the_figure_script_and_are_small():
    make_figures = load_script("make_figures")
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
    make_figures = load_script("make_figures")
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
