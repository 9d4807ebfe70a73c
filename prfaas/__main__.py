"""``python -m prfaas`` runs the CLI."""

from prfaas.operator.cli import main

main()
