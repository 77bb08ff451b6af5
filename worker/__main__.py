from jetqueue.cli import main

raise SystemExit(main())
