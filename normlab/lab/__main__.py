"""``python -m normlab.lab``: the ``normlab`` command (:mod:`normlab.lab.cli`)."""

import sys

from normlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
