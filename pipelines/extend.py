"""Extend a model's context window: `endprompt extend` from a checkout (`ray job submit --working-dir .`).

    python pipelines/extend.py --config llama3-8b-64k --set run.name=llama3-64k-a
    ray job submit --working-dir . -- python pipelines/extend.py --config llama3-8b-64k
"""

import sys

from endprompt_ray.cli import extend as main

if __name__ == "__main__":
    sys.exit(main())
