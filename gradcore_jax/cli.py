"""The `gradcore-jax` command under its first module name (it lives in `gradcore_jax.compare.cli`).

Kept for the console script (`gradcore-jax = gradcore_jax.cli:main`) and for
`from gradcore_jax import cli`; every name here is the `gradcore_jax.compare` object itself.
"""

from gradcore_jax.compare.cli import build_parser
from gradcore_jax.compare.cli import compare
from gradcore_jax.compare.cli import main
from gradcore_jax.compare.cli import optimizer_list
from gradcore_jax.compare.cli import output_folder_problem
from gradcore_jax.compare.cli import positive_int
from gradcore_jax.compare.report import digits_report
from gradcore_jax.compare.report import format_table
from gradcore_jax.compare.report import line_fit_report

__all__ = [
  "build_parser",
  "compare",
  "digits_report",
  "format_table",
  "line_fit_report",
  "main",
  "optimizer_list",
  "output_folder_problem",
  "positive_int",
]
