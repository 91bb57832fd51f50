"""``python -m faastwist.cli``: the same as the ``faastwist`` console script."""

import sys

from faastwist.cli import main

sys.exit(main())
