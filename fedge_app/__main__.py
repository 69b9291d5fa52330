"""``python -m fedge_app`` runs the ``fedge`` command line."""

from fedge_app.cli import main

main()
