"""``python -m clipl.cli ...`` is the ``clipl`` command."""

import sys

from clipl.cli.commands import main

sys.exit(main())
