"""`python -m endprompt_ray COMMAND ...`, the same as `endprompt COMMAND ...`."""

import sys

from endprompt_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
