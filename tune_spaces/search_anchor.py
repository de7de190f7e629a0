"""Ray Tune sweep over EndPrompt's settings: `endprompt sweep` from a checkout (`ray job submit --working-dir .`)."""

import sys

from endprompt_ray.sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main())
