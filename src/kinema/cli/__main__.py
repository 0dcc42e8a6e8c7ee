"""`python -m kinema.cli` (torchrun uses this form)."""

import sys

from kinema.cli import main

sys.exit(main())
