"""``python -m prfaas`` runs the CLI."""

from prfaas.operator.cli.app import main

main()
