"""Docs that run: the ```python blocks of README.md and docs/**/*.md, and the public API's doctests.

The blocks of one Markdown file run in order in one namespace, like a doctest session, so a block can
use what an earlier block of the same file defined. A block written with `>>>` prompts runs as a
doctest (its printed output is compared, `...` matching anything). A block preceded by the comment
`<!-- skip-test: REASON -->` is not run; the reason must be stated. Each file runs in a fresh
temporary working directory, so blocks that write files (checkpoints, CSV logs) leave nothing behind.
One test per file (the blocks of a file depend on each other), so pytest-xdist spreads the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import importlib
import io
import pathlib
import re
import textwrap
import traceback

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# A fence line (possibly indented inside a list item), its info string, the body, the closing fence.
_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_SKIP = re.compile(r"<!--\s*skip-test:(?P<reason>.*?)-->\s*$", re.S)
_DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@dataclasses.dataclass(frozen=True)
class Block:
  """One fenced ```python block: its source (dedented), first line number and skip reason (None: run it)."""

  source: str
  line: int
  skip_reason: str | None


def python_blocks(text: str) -> list[Block]:
  """The ```python blocks of a Markdown text, in order; other languages (bash, text) are left out."""
  blocks = []
  for match in _FENCE.finditer(text):
    if match["info"].strip().split(" ")[0] not in ("python", "py", "pycon"):
      continue
    before = text[: match.start()].rstrip()
    skip = _SKIP.search(before[before.rfind("\n") + 1 :]) if before.endswith("-->") else None
    reason = None
    if skip is not None:
      reason = skip["reason"].strip()
      if not reason:
        raise ValueError(f"skip-test comment before line {text.count(chr(10), 0, match.start()) + 1} gives no reason")
    line = text.count("\n", 0, match.start("body")) + 1
    blocks.append(Block(textwrap.dedent(match["body"]), line, reason))
  return blocks


def _run_block(block: Block, namespace: dict, name: str) -> None:
  """Runs one block in `namespace`: as a doctest when it has `>>>` prompts, else as a script."""
  if re.search(r"^\s*>>>", block.source, re.M):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.source, namespace, name, name.rsplit(":", 1)[0], block.line - 1)
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=_DOCTEST_FLAGS)
    result = runner.run(test, out=report.write, clear_globs=False)
    if result.failed:
      raise AssertionError(f"{name}: doctest failed\n{report.getvalue()}")
    return
  # Padded with blank lines so that a traceback's line numbers are the Markdown file's own.
  code = compile("\n" * (block.line - 1) + block.source, str(ROOT / name.rsplit(":", 1)[0]), "exec")
  exec(code, namespace)  # noqa: S102 - running the documentation is the point of this test


def _files_with_blocks() -> list[pathlib.Path]:
  return [path for path in DOC_FILES if python_blocks(path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("path", _files_with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(path: pathlib.Path, tmp_path, monkeypatch):
  blocks = python_blocks(path.read_text(encoding="utf-8"))
  runnable = [b for b in blocks if b.skip_reason is None]
  if not runnable:
    pytest.skip(f"{path.name}: every python block is marked skip-test")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  namespace: dict = {"__name__": f"docs_{path.stem}"}
  for block in runnable:
    name = f"{path.relative_to(ROOT)}:{block.line}"
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        _run_block(block, namespace, name)
    except Exception as err:
      raise AssertionError(
        f"the python block at {name} failed:\n{textwrap.indent(block.source, '    ')}\n{traceback.format_exc()}"
      ) from err


def test_block_parser_follows_the_rules():
  text = textwrap.dedent(
    """\
    ```python
    a = 1
    ```

    - item:

      ```python
      b = a + 1
      ```

    <!-- skip-test: needs eight hosts -->
    ```python
    raise SystemExit
    ```

    ```bash
    echo not python
    ```
    """
  )
  blocks = python_blocks(text)
  assert [b.source for b in blocks] == ["a = 1\n", "b = a + 1\n", "raise SystemExit\n"]
  assert [b.line for b in blocks] == [2, 8, 13]
  assert [b.skip_reason for b in blocks] == [None, None, "needs eight hosts"]
  with pytest.raises(ValueError, match="gives no reason"):
    python_blocks("<!-- skip-test: -->\n```python\nx = 1\n```\n")


def _modules_with_doctests() -> list[str]:
  """The gradcore_jax modules whose source holds `>>>` examples (found by reading the files, importing nothing)."""
  package_dir = ROOT / "gradcore_jax"
  names = []
  for path in sorted(package_dir.rglob("*.py")):
    if re.search(r"^\s*>>> ", path.read_text(encoding="utf-8"), re.M):
      parts = path.relative_to(ROOT).with_suffix("").parts
      names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  return names


@pytest.mark.parametrize("module_name", _modules_with_doctests())
def test_docstring_examples_run(module_name: str, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  try:
    module = importlib.import_module(module_name)
  except ImportError as err:  # an optional dependency (orbax, tensorboardX) missing: its own tests say so
    pytest.skip(f"{module_name} needs an optional package: {err}")
  tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.examples]
  if not tests:
    pytest.skip(f"{module_name}: no >>> examples")
  runner = doctest.DocTestRunner(optionflags=_DOCTEST_FLAGS)
  report = io.StringIO()
  for test in tests:
    runner.run(test, out=report.write)
  assert runner.failures == 0, report.getvalue()
