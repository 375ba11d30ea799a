"""``python -m mmcore``: the same as the ``mmcore`` command."""

import sys

from .cli import main

sys.exit(main())
