"""``python -m memcallbacks.cli``: same as the ``memcallbacks`` console script."""

import sys

from memcallbacks.cli import main

sys.exit(main())
