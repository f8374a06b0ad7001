"""The `mirrorq` command line: one console script, a subcommand per job the product does.

Each command parses its options, calls one function of the product, and prints; the
commands live by subject in this package's modules.
"""

from mirrorq.cli import (
    batches,
    coverage,
    jobs,
    mirroring,
    policies,
    rates,
    services,
    sessions,
)
from mirrorq.cli.base import main

__all__ = [
    "batches",
    "coverage",
    "jobs",
    "main",
    "mirroring",
    "policies",
    "rates",
    "services",
    "sessions",
]
