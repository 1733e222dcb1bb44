"""``python -m bot`` runs the ``zapa`` command line."""

from bot.cli import main

raise SystemExit(main())
