"""`python -m pathflip.cli ...` (what `torchrun -m` and `accelerate launch -m` need) is the `pathflip` command."""

import sys

from . import main

sys.exit(main())
