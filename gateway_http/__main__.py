"""``python -m gateway_http [flags]``: the same as ``conduit serve gateway [flags]``."""

import sys

from conduit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", "gateway", *sys.argv[1:]]))
