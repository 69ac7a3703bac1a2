from rlpt.cli import main

raise SystemExit(main())
