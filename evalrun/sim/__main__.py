"""`python -m evalrun.sim --port 8089 ...`: the simulator without the rest of the CLI."""

import argparse

from evalrun.sim import add_sim_arguments, options_from_args, serve_forever

parser = argparse.ArgumentParser(prog="python -m evalrun.sim", description=__doc__)
add_sim_arguments(parser)
ns = parser.parse_args()
try:
    options = options_from_args(ns)
except ValueError as exc:
    parser.error(str(exc))
serve_forever(options, port=ns.port)
