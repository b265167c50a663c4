"""The command line as functions: ``main(argv)`` runs ``gflow ARGS`` and returns its exit status."""

from ._cli import build_parser as build_parser
from ._cli import main as main
