"""`make scheduler`: Luigi's central scheduler with its task history in the pipeline's PostgreSQL.

luigid reads `[task_history] db_connection` as a SQLAlchemy URL. For the embedded server that URL
names a socket directory known only at run time, and a password must not sit in a file, so this
launcher fills it in from `[postgres]` (and PGPASSWORD) before starting luigid. It also refuses a
`[resources] postgres` luigid cannot keep, naming it: one that is no number stops luigid's scheduler
in a traceback that names no setting, and a negative one is a cap no task fits under, which would
hold every host's week for ever. And one started twice on a host says so, where luigid ends in a
traceback of its web server's.
"""

from __future__ import annotations

import errno
import sys
from urllib.parse import quote

import luigi.cmdline
import luigi.configuration

from pipeline import config, db


def history_url(server: db.Server) -> str:
    login = quote(server.user) + (f":{quote(server.password)}" if server.password else "")
    if server.host.startswith("/"):
        return f"postgresql+psycopg2://{login}@/{server.database}?host={quote(server.host)}&port={server.port}"
    return f"postgresql+psycopg2://{login}@{server.host}:{server.port}/{server.database}"


def main(argv: list[str]) -> None:
    try:
        config.postgres_slots()
    except ValueError as error:  # luigid would die of it in a traceback, or hold every task for ever
        sys.exit(f"luigid not started: {error}")
    if not luigi.configuration.get_config().get("task_history", "db_connection", ""):
        config.override("task_history", {"db_connection": history_url(db.server())})
    try:
        luigi.cmdline.luigid(argv)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        sys.exit(f"luigid not started: {error.strerror}: a luigid runs on this host already (make scheduler, once a "
                 "host), or another program has its port (--port, --address)")


if __name__ == "__main__":
    main(sys.argv[1:])
