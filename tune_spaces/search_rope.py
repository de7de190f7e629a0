"""LongRoPE's factor search: `endprompt search-rope` from a checkout (`ray job submit --working-dir .`)."""

import sys

from endprompt_ray.longrope.cli import main

if __name__ == "__main__":
    sys.exit(main())
