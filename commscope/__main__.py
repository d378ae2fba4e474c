from commscope.cli import main

raise SystemExit(main())
