"""`python -m endprompt_ray COMMAND ...`, the same as `endprompt COMMAND ...`: runs endprompt_ray.cli as the main
module, as `python -m endprompt_ray.cli` would."""

import runpy

runpy.run_module("endprompt_ray.cli", run_name="__main__", alter_sys=True)
