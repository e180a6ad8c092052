from mailslot.cli import main

raise SystemExit(main())
