"""`python -m wgkube` is `wg-kube`."""

import sys

from wgkube.cli import main

sys.exit(main())
