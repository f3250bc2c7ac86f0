"""The `gradcore-jax` command (also `python -m gradcore_jax`).

    gradcore-jax compare            # both of the article's experiments, tables and PNG plots
    gradcore-jax compare --json     # the same, as JSON on stdout

The experiments themselves are in `gradcore_jax.experiments`; this module only parses
options, prints and calls the plotting helper.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
import time
from typing import Any
from typing import Optional
from typing import Sequence
from typing import TextIO

from gradcore_jax import experiments
from gradcore_jax import optimizers

DEFAULT_OUT = "gradcore-compare"
_PLOT_FILES = ("compare_regression.png", "compare_digits.png")  # what plotting.save_comparison_plots writes
_TASK_CHOICES = (*experiments.TASKS, "all")
_DEFAULT_EPOCHS = {"regression": experiments.LineFitSetup.epochs, "digits": experiments.DigitsSetup.epochs}
_DEFAULT_BATCH = {"regression": experiments.LineFitSetup.batch_size, "digits": experiments.DigitsSetup.batch_size}


# ---------------------------------------------------------------------------------------
# Option types: each raises argparse.ArgumentTypeError, which argparse turns into exit 2.


def _integer(text: str, minimum: int) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if value < minimum:
    raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
  return value


def positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  return _integer(text, 1)


def _non_negative_int(text: str) -> int:
  return _integer(text, 0)


def _optimizer_name(text: str) -> str:
  name = text.strip()
  try:
    optimizers.get(name)
  except ValueError as err:
    raise argparse.ArgumentTypeError(str(err)) from None
  return name


def optimizer_list(text: str) -> tuple[str, ...]:
  """`"sgd, adam"` -> `("sgd", "adam")`; unknown, empty or repeated names are refused."""
  names = tuple(_optimizer_name(part) for part in text.split(","))
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise argparse.ArgumentTypeError(f"optimizer listed twice: {', '.join(repeated)}")
  return names


def _learning_rate(text: str) -> tuple[str, float]:
  """`"adam=0.01"` -> `("adam", 0.01)`; the value must be a positive finite number."""
  name, sep, value = text.partition("=")
  if not sep or not name.strip() or not value.strip():
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE, e.g. adam=0.01; got {text!r}")
  try:
    lr = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"the learning rate in {text!r} is not a number") from None
  if not (math.isfinite(lr) and lr > 0):
    raise argparse.ArgumentTypeError(f"the learning rate in {text!r} must be a positive finite number")
  return _optimizer_name(name), lr


# ---------------------------------------------------------------------------------------
# The parser.


def _lr_table() -> str:
  """The default learning rates of every optimizer, for --help."""
  rows = [
    f"  {name:9s}{experiments.default_learning_rate('regression', name):>10g}"
    f"{experiments.default_learning_rate('digits', name):>9g}"
    for name in optimizers.names()
  ]
  return "\n".join(
    [
      "default learning rates:",
      "  optimizer  line fit   digits",
      *rows,
      "",
      "line fit: one rate, 0.1, for all (Adadelta: 1, its own default): the slope must travel from 0 to 30",
      "  in 1,000 updates, and 0.1 is safe for SGD on the intercept. digits: each optimizer's library default",
      "  (PyTorch's), and 0.1 for SGD, which has no PyTorch default.",
    ]
  )


def build_parser() -> argparse.ArgumentParser:
  """The `gradcore-jax` argument parser (subcommand `compare`)."""
  parser = argparse.ArgumentParser(
    prog="gradcore-jax",
    description="gradcore_jax: PyTorch-exact optimizers for JAX. `compare` reruns the SGD / momentum / "
    "RMSprop / Adam article's experiments with this library.",
  )
  commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  compare = commands.add_parser(
    "compare",
    help="run the article's line fit and digits comparison; print tables, write PNG plots",
    description="Reruns the article's two experiments on embedded data (about 20-30 s on 2 CPU cores):\n"
    "  regression: fit y = 30x + 2 + noise by per-example updates; prints the recovered m and b.\n"
    "  digits: a linear layer 64->10 on scikit-learn's 8x8 digits with MSE on one-hot targets;\n"
    "          prints updates to reach a loss threshold, final loss and test accuracy.",
    epilog=_lr_table(),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  compare.add_argument("--task", choices=_TASK_CHOICES, default="all", help="which experiment to run (default: all)")
  compare.add_argument(
    "--optimizers",
    type=optimizer_list,
    default=experiments.DEFAULT_OPTIMIZERS,
    metavar="LIST",
    help="comma-separated optimizer names, any of: "
    + ", ".join(optimizers.names())
    + f" (default: {','.join(experiments.DEFAULT_OPTIMIZERS)})",
  )
  compare.add_argument(
    "--epochs",
    type=positive_int,
    metavar="N",
    help="epochs for every task run (default: {regression} for regression, {digits} for digits)".format(
      **_DEFAULT_EPOCHS
    ),
  )
  compare.add_argument(
    "--batch-size",
    type=positive_int,
    metavar="N",
    help="examples per update for every task run (default: {regression} for regression, "
    "i.e. per-example updates as in the article; {digits} for digits)".format(**_DEFAULT_BATCH),
  )
  compare.add_argument(
    "--lr",
    type=_learning_rate,
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="learning rate of optimizer NAME for every task run, e.g. --lr adam=0.01; repeatable (defaults: see below)",
  )
  compare.add_argument(
    "--seed",
    type=_non_negative_int,
    default=0,
    metavar="N",
    help="seed of the data, the train/test split, the initial weights and the shuffling (default: 0)",
  )
  compare.add_argument(
    "--out",
    type=pathlib.Path,
    default=pathlib.Path(DEFAULT_OUT),
    metavar="DIR",
    help=f"directory for the PNG plots (default: ./{DEFAULT_OUT}/)",
  )
  compare.add_argument(
    "--json", action="store_true", help="print only a JSON summary on stdout (the tables go to stderr)"
  )
  compare.add_argument("--no-plot", action="store_true", help="write no plots (matplotlib is not needed)")
  return parser


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Parses and cross-checks the options; usage errors exit with status 2."""
  parser = build_parser()
  args = parser.parse_args(argv)
  given = [name for name, _ in args.lr]
  repeated = sorted({name for name in given if given.count(name) > 1})
  if repeated:
    parser.error(f"--lr: learning rate given twice for {', '.join(repeated)}")
  unused = [name for name in given if name not in args.optimizers]
  if unused:
    parser.error(f"--lr names {', '.join(unused)}, which --optimizers does not include ({','.join(args.optimizers)})")
  args.lr = dict(args.lr)
  if not args.no_plot:
    problem = output_folder_problem(args.out, _PLOT_FILES)
    if problem:
      parser.error(f"--out: {problem} (or pass --no-plot)")
  return args


def output_folder_problem(folder: pathlib.Path, files: Sequence[str] = ()) -> Optional[str]:
  """None when `folder` exists and takes new `files`, or can be created; else what is wrong.

  Checked before any experiment runs, without creating anything: the folder must be a
  folder (not a file), `files` in it must not be folders, and the folder (or the nearest
  existing folder above it, when it must be created) must accept a new file, which is
  found out by creating and deleting a temporary one.

  Args:
    folder: the output folder.
    files: names of the files that will be written into it.
  """
  folder = pathlib.Path(folder)
  if folder.exists() and not folder.is_dir():
    return f"{folder} exists and is not a folder"
  for name in files:
    if (folder / name).is_dir():
      return f"{folder / name} is a folder, where a plot is to be written"
  existing = folder
  while not existing.exists():
    if existing.parent == existing:
      break
    existing = existing.parent
  if not existing.is_dir():
    return f"{existing} is a file, so {folder} cannot be created"
  try:
    with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
      pass
  except OSError as err:
    what = f"write into {folder}" if existing == folder else f"create {folder} in {existing}"
    return f"cannot {what}: {err.strerror or err}"
  return None


# ---------------------------------------------------------------------------------------
# Reports.


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int = 1) -> str:
  """A plain-text table: the first `text_columns` columns left-aligned, the others right-aligned."""
  widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]

  def line(cells: Sequence[str]) -> str:
    return "  ".join(
      f"{c:<{w}}" if i < text_columns else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()

  return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _fixed(value: float, digits: int) -> str:
  return f"{value:.{digits}f}" if math.isfinite(value) else "diverged"


def line_fit_report(comparison: experiments.LineFitComparison) -> str:
  """The line fit's setup, its table (m, b, final loss per optimizer) and how to read it."""
  s = comparison.setup
  rows = [
    [name, f"{r.learning_rate:g}", _fixed(r.m, 2), _fixed(r.b, 2), _fixed(r.final_loss, 3)]
    for name, r in comparison.results.items()
  ]
  rows.append(["(true)", "", f"{s.slope:.2f}", f"{s.intercept:.2f}", f"~{s.noise**2:.3f}"])
  updates = "per-example updates" if s.batch_size == 1 else f"batches of {s.batch_size}"
  return "\n".join(
    [
      f"Line fit: y = {s.slope:g}*x + {s.intercept:g} + noise (sd {s.noise:g}), {s.num_points} points, "
      f"x uniform in [-{s.x_range:g}, {s.x_range:g}]; start m = b = 0",
      f"{s.epochs} epochs of {updates} = {s.updates} updates per optimizer",
      "",
      format_table(["optimizer", "lr", "m", "b", "final loss"], rows),
      "",
      "- final loss: mean squared error over all points with the final m, b (the noise alone gives ~sd^2).",
      "- SGD steps by lr x gradient; the slope's gradient 2*x*error is small where x is, so m crawls.",
      "- RMSprop and Adam divide each parameter's gradient by its own running RMS and move ~lr per update.",
    ]
  )


def digits_report(comparison: experiments.DigitsComparison) -> str:
  """The digits run's setup, its table (updates to threshold, final loss, test accuracy) and notes."""
  s = comparison.setup
  threshold = f"updates to loss <= {s.loss_threshold:g}"
  rows = []
  for name, r in comparison.results.items():
    if r.diverged_at is not None:
      rows.append([name, f"{r.learning_rate:g}", f"diverged at update {r.diverged_at}", "-", "-"])
      continue
    reached = str(r.updates_to_threshold) if r.updates_to_threshold is not None else "not reached"
    rows.append([name, f"{r.learning_rate:g}", reached, _fixed(r.final_loss, 4), f"{100 * r.test_accuracy:.1f} %"])
  return "\n".join(
    [
      f"Digits: scikit-learn's 8x8 digits, pixels scaled to [0, 1], {100 * s.test_fraction:g} % held out for testing",
      f"linear layer 64->10, MSE loss on one-hot targets, batch {s.batch_size}, {s.epochs} epochs = "
      f"{comparison.updates} updates per optimizer",
      "",
      format_table(["optimizer", "lr", threshold, "final loss", "test accuracy"], rows),
      "",
      f"- updates to loss <= {s.loss_threshold:g}: updates (one per batch) until the mean loss of the last "
      f"{s.smoothing} batches first was <= {s.loss_threshold:g}.",
      "- final loss: MSE over the whole training set with the final weights.",
    ]
  )


# ---------------------------------------------------------------------------------------
# The command.


def _setups(args: argparse.Namespace) -> tuple[Optional[experiments.LineFitSetup], Optional[experiments.DigitsSetup]]:
  """The setups of the tasks to run (None for a task not run), with the options applied."""
  options = {"seed": args.seed}
  if args.epochs is not None:
    options["epochs"] = args.epochs
  if args.batch_size is not None:
    options["batch_size"] = args.batch_size
  line_fit = experiments.LineFitSetup(**options) if args.task in ("regression", "all") else None
  digits = experiments.DigitsSetup(**options) if args.task in ("digits", "all") else None
  return line_fit, digits


def _say(text: str, stream: TextIO) -> None:
  print(text, file=stream, flush=True)


def _plotting() -> Any:
  """The plotting helper, once matplotlib is known to be there (before any experiment runs)."""
  from gradcore_jax import plotting  # pylint: disable=g-import-not-at-top

  plotting.require_matplotlib()
  return plotting


def compare(args: argparse.Namespace) -> int:
  """Runs `gradcore-jax compare` with parsed `args`; returns the exit status."""
  started = time.perf_counter()
  report = sys.stderr if args.json else sys.stdout
  line_setup, digits_setup = _setups(args)
  line_fit = digits = None
  plotting = None if args.no_plot else _plotting()
  overrides = ", ".join(f"{name}={lr:g}" for name, lr in args.lr.items())
  rates = f"the defaults, except {overrides} (--lr)" if overrides else "the defaults (see --help; change with --lr)"
  _say(f"gradcore-jax compare, seed {args.seed}; learning rates: {rates}.\n", report)
  if line_setup is not None:
    line_fit = experiments.compare_line_fit(
      experiments.learning_rates("regression", args.optimizers, args.lr), line_setup
    )
    _say(line_fit_report(line_fit) + "\n", report)
  if digits_setup is not None:
    digits = experiments.compare_digits(experiments.learning_rates("digits", args.optimizers, args.lr), digits_setup)
    _say(digits_report(digits) + "\n", report)
  status = 0
  if plotting is not None:
    try:
      written = plotting.save_comparison_plots(args.out, line_fit, digits)
      _say("Plots: " + ", ".join(str(path) for path in written), report)
    except OSError as err:  # checked before the runs, but the disk can still fill up: keep the results
      print(f"gradcore-jax: error: the plots could not be written to {args.out}: {err}", file=sys.stderr)
      status = 1
  _say(f"Finished in {time.perf_counter() - started:.1f} s.", report)
  if args.json:
    print(json.dumps(experiments.summary(line_fit, digits), indent=2, allow_nan=False))
  return status


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `gradcore-jax`; returns the exit status (2 for bad options)."""
  try:
    args = _parse(argv)
  except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
    return exit_.code if isinstance(exit_.code, int) else 2
  try:
    return compare(args)
  except (ImportError, OSError) as err:
    print(f"gradcore-jax: error: {err}", file=sys.stderr)
    return 1
