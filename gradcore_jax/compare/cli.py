"""The `gradcore-jax` command (also `python -m gradcore_jax`).

    gradcore-jax compare                 # the article's experiments, swept, both presets, claims, plots
    gradcore-jax compare --no-sweep      # each optimizer at its default rate only
    gradcore-jax compare --json          # the same, as JSON on stdout

The experiments are in `gradcore_jax.compare.{line_fit,digits,sweep,claims}`; this module
parses options, prints and calls the plotting helper.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from gradcore_jax import optimizers
from gradcore_jax.compare import claims
from gradcore_jax.compare import digits
from gradcore_jax.compare import line_fit
from gradcore_jax.compare import presets
from gradcore_jax.compare import report
from gradcore_jax.compare import sweep

DEFAULT_OUT = "gradcore-compare"
DEFAULT_GRID = (1e-5, 10.0, 19)
# What a default run takes on a quiet 2-core CPU machine, measured; --help and the README say it.
TYPICAL_SECONDS = 20
TYPICAL_SECONDS_NO_SWEEP = 15
_TASK_CHOICES = (*presets.TASKS, "all")
_PRESET_CHOICES = (*presets.PRESET_NAMES, "both")
_SETUPS: dict[str, sweep.Setup] = {**line_fit.LINE_FIT_SETUPS, "digits": digits.DigitsSetup()}


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
  """An argparse type: an integer >= 1.

  Args:
    text: the option's text.
  """
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
  """`"sgd, adam"` -> `("sgd", "adam")`; unknown, empty or repeated names are refused.

  Args:
    text: the option's text.
  """
  names = tuple(_optimizer_name(part) for part in text.split(","))
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise argparse.ArgumentTypeError(f"optimizer listed twice: {', '.join(repeated)}")
  return names


def _positive_float(text: str, what: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"{what} {text!r} must be a positive finite number")
  return value


def _learning_rate(text: str) -> tuple[str, float]:
  """`"adam=0.01"` -> `("adam", 0.01)`; the value must be a positive finite number."""
  name, sep, value = text.partition("=")
  if not sep or not name.strip() or not value.strip():
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE, e.g. adam=0.01; got {text!r}")
  if value.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity"):
    raise argparse.ArgumentTypeError(f"the learning rate in {text!r} must be a positive finite number")
  try:
    lr = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"the learning rate in {text!r} is not a number") from None
  if not (math.isfinite(lr) and lr > 0):
    raise argparse.ArgumentTypeError(f"the learning rate in {text!r} must be a positive finite number")
  return _optimizer_name(name), lr


def lr_grid(text: str) -> tuple[float, ...]:
  """`"1e-5:10:19"` -> 19 log-spaced rates from 1e-5 to 10 (`sweep.learning_rate_grid`).

  Args:
    text: `LOW:HIGH:POINTS`.
  """
  parts = text.split(":")
  if len(parts) != 3:
    raise argparse.ArgumentTypeError(f"expected LOW:HIGH:POINTS, e.g. 1e-5:10:19; got {text!r}")
  low, high = (_positive_float(p, "the rate") for p in parts[:2])
  points = _integer(parts[2], 1)
  try:
    return sweep.learning_rate_grid(low, high, points)
  except ValueError as err:
    raise argparse.ArgumentTypeError(str(err)) from None


# ---------------------------------------------------------------------------------------
# The parser.


def _lr_table() -> str:
  """The default learning rates of every optimizer, for --help."""
  rows = [
    f"  {name:9s}" + "".join(f"{presets.default_learning_rate(task, name):>13g}" for task in presets.TASKS)
    for name in optimizers.names()
    if presets.unsupported_reason(name) is None
  ]
  return "\n".join(
    [
      "default learning rates (used with --no-sweep; swept runs include them):",
      "  optimizer" + "".join(f"{task:>13s}" for task in presets.TASKS),
      *rows,
      "",
      "regression: one rate, 0.1, for all (Adadelta: 1, its own default): the slope must travel from 0 to 30",
      "  in 1,000 updates, and 0.1 is safe for SGD on the intercept. spreadsheet: 1e-4 for SGD-like optimizers",
      "  (the slope's curvature 2x^2 reaches 2e4), 1 for the others (the intercept must travel 30 in 60",
      "  updates). digits: each optimizer's library default (PyTorch's), and 0.1 for SGD, which has none.",
      "",
      "presets:",
      *(f"  {p.name:8s} {p.description}" for p in presets.PRESETS.values()),
      "",
      f"best rate rule: {sweep.BEST_RULE}",
    ]
  )


def _add_compare(commands: Any) -> argparse.ArgumentParser:
  compare = commands.add_parser(
    "compare",
    help="rerun the article's experiments: sweep, presets, claim-by-claim verdicts, PNG plots",
    description=(
      "Reruns the SGD / momentum / RMSprop / Adam article's experiments on embedded data\n"
      f"(about {TYPICAL_SECONDS} s on 2 CPU cores; {TYPICAL_SECONDS_NO_SWEEP} s with --no-sweep):\n"
      "  regression:  fit y = 30x + 2 + noise, x in [-0.1, 0.1], by per-example updates (slow slope).\n"
      "  spreadsheet: fit y = 2x + 30, x in [0, 100] (the fast.ai spreadsheet behind the article's\n"
      "               figures: slow intercept).\n"
      "  digits:      a linear layer 64->10 on scikit-learn's 8x8 digits, MSE on one-hot targets.\n"
      "Each optimizer runs over a log grid of learning rates (vmapped: one compiled run per optimizer\n"
      "and task), under PyTorch's coefficients and the article's; then the article's claims are checked."
    ),
    epilog=_lr_table(),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  compare.add_argument("--task", choices=_TASK_CHOICES, default="all", help="which experiment to run (default: all)")
  compare.add_argument(
    "--optimizers",
    type=optimizer_list,
    default=presets.DEFAULT_OPTIMIZERS,
    metavar="LIST",
    help="comma-separated optimizer names, any of: "
    + ", ".join(n for n in optimizers.names() if presets.unsupported_reason(n) is None)
    + f" (default: {','.join(presets.DEFAULT_OPTIMIZERS)})",
  )
  compare.add_argument(
    "--preset",
    choices=_PRESET_CHOICES,
    default="both",
    help="the optimizers' coefficients: torch (PyTorch's defaults), article (the article's) or both (default)",
  )
  compare.add_argument(
    "--sweep",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="run every optimizer over the --lr-grid and report it at its best rate (default: on; --no-sweep runs "
    "the default rates only)",
  )
  compare.add_argument(
    "--lr-grid",
    type=lr_grid,
    default=sweep.learning_rate_grid(*DEFAULT_GRID),
    metavar="LOW:HIGH:N",
    help="the swept rates: N log-spaced from LOW to HIGH (default: {}:{:g}:{}, 3 per decade)".format(*DEFAULT_GRID),
  )
  compare.add_argument(
    "--epochs",
    type=positive_int,
    metavar="N",
    help="epochs for every task run (default: {} for the line fits, {} for digits)".format(
      line_fit.REGRESSION.epochs, digits.DigitsSetup.epochs
    ),
  )
  compare.add_argument(
    "--batch-size",
    type=positive_int,
    metavar="N",
    help="examples per update for every task run (default: 1 for the line fits, i.e. per-example updates as in "
    f"the article; {digits.DigitsSetup.batch_size} for digits)",
  )
  compare.add_argument(
    "--lr",
    type=_learning_rate,
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="learning rate of optimizer NAME for every task run, e.g. --lr adam=0.01; repeatable; NAME is then "
    "not swept (defaults: see below)",
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
    "--json", action="store_true", help="print only a JSON summary on stdout (the report goes to stderr)"
  )
  compare.add_argument("--no-plot", action="store_true", help="write no plots (matplotlib is not needed)")
  return compare


def build_parser() -> argparse.ArgumentParser:
  """The `gradcore-jax` argument parser (subcommand `compare`)."""
  parser = argparse.ArgumentParser(
    prog="gradcore-jax",
    description="gradcore_jax: PyTorch-exact optimizers for JAX. `compare` reruns the SGD / momentum / "
    "RMSprop / Adam article's experiments with this library.",
  )
  commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  _add_compare(commands)
  return parser


def _compare_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """The `compare` subparser of `parser` (its errors print compare's usage, not the top level's)."""
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      return action.choices["compare"]
  raise LookupError("the parser has no compare command")


def _tasks(task: str) -> tuple[str, ...]:
  return presets.TASKS if task == "all" else (task,)


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Parses and cross-checks the options; usage errors exit with status 2."""
  parser = build_parser()
  args = parser.parse_args(argv)
  compare = _compare_parser(parser)
  given = [name for name, _ in args.lr]
  repeated = sorted({name for name in given if given.count(name) > 1})
  if repeated:
    compare.error(f"--lr: learning rate given twice for {', '.join(repeated)}")
  unused = [name for name in given if name not in args.optimizers]
  if unused:
    compare.error(f"--lr names {', '.join(unused)}, which --optimizers does not include ({','.join(args.optimizers)})")
  for name in args.optimizers:
    reason = presets.unsupported_reason(name)
    if reason is not None:
      compare.error(f"--optimizers: {name} cannot train the experiments' scalar and vector parameters: {reason}")
  args.lr = dict(args.lr)
  args.tasks = _tasks(args.task)
  args.presets = presets.PRESET_NAMES if args.preset == "both" else (args.preset,)
  if not args.no_plot:
    from gradcore_jax.compare import plots  # pylint: disable=g-import-not-at-top

    problem = output_folder_problem(args.out, plots.plot_files(args.tasks, args.sweep))
    if problem:
      compare.error(f"--out: {problem} (or pass --no-plot)")
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
# The command.


def setups(args: argparse.Namespace) -> dict[str, sweep.Setup]:
  """`{task: setup}` for the tasks to run, with --epochs, --batch-size and --seed applied.

  Args:
    args: the parsed options.
  """
  options: dict[str, int] = {"seed": args.seed}
  if args.epochs is not None:
    options["epochs"] = args.epochs
  if args.batch_size is not None:
    options["batch_size"] = args.batch_size
  return {task: dataclasses.replace(_SETUPS[task], **options) for task in args.tasks}


def _say(text: str, stream: TextIO) -> None:
  print(text, file=stream, flush=True)


def _plots_module() -> Any:
  """The plotting helper, once matplotlib is known to be there (before any experiment runs)."""
  from gradcore_jax.compare import plots  # pylint: disable=g-import-not-at-top

  plots.require_matplotlib()
  return plots


def _header(args: argparse.Namespace) -> str:
  overrides = ", ".join(f"{name}={lr:g}" for name, lr in args.lr.items())
  if args.sweep:
    grid = args.lr_grid
    rates = f"each optimizer swept over {len(grid)} rates from {min(grid):g} to {max(grid):g} and reported at its best"
    if overrides:
      rates += f", except {overrides} (--lr)"
  else:
    rates = "the defaults (see --help)" + (f", except {overrides} (--lr)" if overrides else "")
  presets_text = ("presets " if len(args.presets) > 1 else "preset ") + " and ".join(args.presets)
  lines = [
    f"gradcore-jax compare, seed {args.seed}: {', '.join(args.optimizers)} under {presets_text}.",
    f"Learning rates: {rates}.",
  ]
  for name in args.presets:
    lines.append(f"  preset {name}: {presets.get_preset(name).description}.")
  if args.sweep:
    lines.append(f"Best rate rule: {sweep.BEST_RULE}")
  return "\n".join(lines) + "\n"


def _progress(total: int) -> Any:
  """A tqdm bar on stderr, shown only on a terminal (tests and pipes see nothing)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(total=total, desc="runs", unit="optimizer", file=sys.stderr, disable=None, leave=False)


def compare(args: argparse.Namespace) -> int:
  """Runs `gradcore-jax compare` with parsed `args`; returns the exit status.

  Args:
    args: the output of the parser, cross-checked.
  """
  started = time.perf_counter()
  stream = sys.stderr if args.json else sys.stdout
  plots = None if args.no_plot else _plots_module()
  _say(_header(args), stream)
  runs = []
  grid = args.lr_grid if args.sweep else ()
  with _progress(len(args.tasks) * len(args.optimizers)) as bar:
    for task, setup in setups(args).items():
      bar.set_description(task)
      run = sweep.run_task(
        task,
        setup,
        args.optimizers,
        args.presets,
        presets.learning_rates(task, args.optimizers, args.lr),
        grid=grid,
        fixed=tuple(args.lr),
        on_optimizer_done=lambda _: bar.update(),
      )
      runs.append(run)
      bar.clear()
      _say(report.task_report(run) + "\n", stream)
  checks = claims.check_claims(runs)
  _say(report.claims_report(checks) + "\n", stream)
  status = 0
  if plots is not None:
    try:
      written = plots.save_plots(args.out, runs)
      _say("Plots: " + ", ".join(str(path) for path in written), stream)
    except OSError as err:  # checked before the runs, but the disk can still fill up: keep the results
      print(f"gradcore-jax: error: the plots could not be written to {args.out}: {err}", file=sys.stderr)
      status = 1
  typical = TYPICAL_SECONDS if args.sweep else TYPICAL_SECONDS_NO_SWEEP
  _say(
    f"Finished in {time.perf_counter() - started:.1f} s (a default run{'' if args.sweep else ' with --no-sweep'} "
    f"takes about {typical} s on 2 CPU cores).",
    stream,
  )
  if args.json:
    print(json.dumps(report.summary(runs, checks), indent=2, allow_nan=False))
  return status


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `gradcore-jax`; returns the exit status (2 for bad options).

  Args:
    argv: the arguments after the program name (default: `sys.argv[1:]`).
  """
  try:
    args = _parse(argv)
  except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
    return exit_.code if isinstance(exit_.code, int) else 2
  try:
    return compare(args)
  except (ImportError, OSError) as err:
    print(f"gradcore-jax: error: {err}", file=sys.stderr)
    return 1
