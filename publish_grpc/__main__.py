"""``python -m publish_grpc [flags]``: the same as ``conduit serve publish [flags]``."""

import sys

from conduit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", "publish", *sys.argv[1:]]))
