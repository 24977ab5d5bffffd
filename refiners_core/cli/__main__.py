"""``python -m refiners_core.cli`` runs the ``refiners`` command line."""

from refiners_core.cli.app import main

main()
