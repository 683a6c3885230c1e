from shufflenet.cli import main

raise SystemExit(main())
