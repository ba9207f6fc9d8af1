"""`python -m orchestrator ...` == `orchestrate ...` (the GPU box runs it this way, without installing)."""

from orchestrator.cli import main

raise SystemExit(main())
