"""``python -m channels_redis_fast COMMAND``: operator commands (see cli/).

    python -m channels_redis_fast check --hosts redis://localhost:6379 | --settings mysite.settings
    python -m channels_redis_fast stats --hosts redis://localhost:6379 [--prefix asgi]
        [--interval 2] [--once]
"""

from __future__ import annotations

import sys

USAGE = """usage: python -m channels_redis_fast COMMAND [options]

commands:
  check   connect to every shard of a layer and report what is wrong
          (check --hosts URL ... | check --settings mysite.settings [--layer default])
  stats   live view of the channels and groups a layer keeps in Redis
          (stats --hosts URL [--prefix asgi] [--interval 2] [--once])

`python -m channels_redis_fast COMMAND --help` describes a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "stats":
        from .cli.top import main as top_main

        return top_main(rest)
    if command == "check":
        from .cli.check import main as check_main

        return check_main(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
