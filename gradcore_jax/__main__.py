"""`python -m gradcore_jax ...` runs the `gradcore-jax` command."""

from gradcore_jax.compare.cli import main

raise SystemExit(main())
