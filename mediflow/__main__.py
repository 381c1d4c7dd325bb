from mediflow.cli import main

raise SystemExit(main())
