"""`python -m trmrl ...` (what `torchrun ... -m trmrl train PRESET` starts in every process)."""

import sys

from trmrl.cli import main

sys.exit(main())
