import sys

from kmrl_sync.cli import main

sys.exit(main())
