"""``python -m proxy.demo``: the same as ``shadowproxy demo``."""

import sys

from proxy.demo import main

sys.exit(main())
