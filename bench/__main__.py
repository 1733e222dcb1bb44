"""``python -m bench`` runs the generic-webhook benchmark."""

from bench.generic import main

raise SystemExit(main())
