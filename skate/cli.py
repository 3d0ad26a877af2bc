"""The ``skate`` command: one small function per subcommand over the public API."""

from __future__ import annotations

import sys

import click


@click.group()
def main() -> None:
    """skate: a distributed execution framework with Ray's API."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def microbenchmark(ctx: click.Context) -> None:
    """Runs the microbenchmarks (add --compare ray to run Ray side by side)."""
    from skate._private import microbenchmark as mb

    sys.exit(mb.main(list(ctx.args)))


if __name__ == "__main__":
    main()
