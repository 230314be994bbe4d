"""The `wg-kube` command: `wg-kube hub` runs the hub operator, `wg-kube spoke` the agent."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: wg-kube {hub,spoke,router,status,version} [options]

  hub      run the hub operator (Kopf) on the hub node
  spoke    run the spoke agent on a spoke node
  router   route the overlay via the hub on an ordinary cluster node
  status   show the overlay: hubs, peers, their health (read-only, from the API)
  version  print the version

`wg-kube hub --help`, `wg-kube spoke --help` and `wg-kube router --help` list the options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "version":
        from wgkube import __version__

        print(__version__)
        return 0
    if command == "hub":
        from wgkube.operator.main import run as run_hub

        return run_hub(rest)
    if command == "spoke":
        from wgkube.spoke_agent.main import run as run_spoke

        return run_spoke(rest)
    if command == "status":
        from wgkube.observe.status import main as status

        return status(rest)
    if command == "router":
        from wgkube.router.main import run as run_router

        return run_router(rest)
    print(f"wg-kube: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
