"""``python -m channels_redis_fast COMMAND``: operational commands.

    python -m channels_redis_fast stats --hosts redis://localhost:6379 [--prefix asgi]
        [--interval 2] [--once]
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m channels_redis_fast stats --hosts URL [--prefix asgi] [--interval 2] [--once]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "stats":
        from .cli.top import main as stats_main

        return stats_main(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
