# SPDX-License-Identifier: Apache-2.0
"""docs/planner.md's paper figures are what ``vllm-helix simulate --paper`` prints: one source of truth.

The docs hold three pinned blocks, each after an HTML comment naming what it is pinned to:
- the headline table (``pinned: simulate --paper --json``): model | JSON key | ours | ...;
- the sensitivity table (``pinned: simulate --paper --json FLAGS``): a row per flag set, "a× / b× / c%" a
  model;
- the per-layer derivation (``pinned: simulate --paper --explain`` ... ``end pinned``), compared verbatim.
Each number is compared within half a unit of its last printed digit.
"""

import contextlib
import functools
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from vllm_helix.planner.cli import simulate_main

DOC = Path(__file__).resolve().parents[2] / "docs" / "planner.md"
KEYS = ("max_interactivity_gain", "throughput_gain_at_equal_ttl", "hop_b_off_loss")


@functools.cache
def simulate(*argv: str) -> str:
    """stdout of ``vllm-helix simulate --paper ARGV`` (cached: several tests share a run)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert simulate_main(["--paper", *argv]) == 0
    return buf.getvalue()


def _table_after(marker: str) -> list[list[str]]:
    """Body rows (cells stripped) of the first Markdown table after the line holding ``marker``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[2:]  # header and separator


def _figure(text: str) -> tuple[float, float]:
    """``"**1.84×**"`` -> (1.84, 0.005); ``"12.8%"`` -> (0.128, 0.0005): value and half a printed unit."""
    m = re.fullmatch(r"\**\s*([0-9.]+)\s*([×%])\s*\**", text.strip())
    assert m, f"not a figure: {text!r}"
    digits = len(m.group(1).partition(".")[2])
    scale = 0.01 if m.group(2) == "%" else 1.0
    return float(m.group(1)) * scale, 0.5 * 10.0**-digits * scale + 1e-9


def _check(doc_text: str, value: float, where: str) -> None:
    doc, tol = _figure(doc_text)
    assert abs(doc - value) <= tol, f"{where}: docs say {doc_text}, simulate gives {value}"


def test_headline_table_is_simulate_json():
    ours = json.loads(simulate("--json"))
    rows = _table_after("pinned: simulate --paper --json -->")
    assert {(r[0], r[1].strip("`")) for r in rows} == {(m, k) for m in ours for k in KEYS}
    for model, key, figure, *_ in rows:
        _check(figure, ours[model][key.strip("`")], f"{model} {key}")


def _sensitivity_rows() -> list[list[str]]:
    return _table_after("pinned: simulate --paper --json FLAGS")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("row", _sensitivity_rows(), ids=lambda r: r[0])
def test_sensitivity_table_is_simulate_json(row):
    flags = shlex.split(row[0].strip("`")) if row[0].startswith("`") else []
    ours = json.loads(simulate("--json", *flags))
    models = ("deepseek-r1", "llama-405b")  # column order of the table, as in its header
    for model, cell in zip(models, row[1:3], strict=True):
        figures = [f.strip() for f in cell.split("/")]
        assert len(figures) == len(KEYS), cell
        for key, figure in zip(KEYS, figures, strict=True):
            _check(figure, ours[model][key], f"{row[0]} {model} {key}")


def test_sensitivity_table_header_names_models_in_order():
    lines = DOC.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if "pinned: simulate --paper --json FLAGS" in line)
    header = next(line for line in lines[i + 1 :] if line.startswith("|"))
    assert [c.strip() for c in header.strip().strip("|").split("|")][1:3] == ["`deepseek-r1`", "`llama-405b`"]


def test_explain_block_is_simulate_explain():
    text = DOC.read_text()
    begin, end = "<!-- pinned: simulate --paper --explain -->\n", "<!-- end pinned -->"
    assert begin in text and end in text
    block = text.split(begin, 1)[1].split(end, 1)[0]
    hint = "regenerate the block with `vllm-helix simulate --paper --explain`"
    assert block.strip() == simulate("--explain").strip(), hint
