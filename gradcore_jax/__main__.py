"""`python -m gradcore_jax ...` runs the `gradcore-jax` command."""

from gradcore_jax.cli import main

raise SystemExit(main())
