"""``/readyz`` answers anyone, so it says ready or not and nothing about the database."""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

from tests.conftest import PG_HOST, pg_admin
from tests.service.server import Service, wait_for


def test_not_ready_names_no_user_host_or_database(
    tmp_path: Path, pg_database: tuple[str, str], pg_url: str
) -> None:
    user, name = pg_database
    env = {"MAILSIFT_DATABASE_URL": pg_url}
    with Service(tmp_path / "data", env=env) as svc:
        with pg_admin(user, "test") as admin:  # the database goes away under the service
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        with svc.client(token=None) as anyone, svc.client(admin=True) as admin_side:
            assert wait_for(lambda: anyone.get("/readyz").status_code == 503, timeout=10)
            body = anyone.get("/readyz").json()
            assert body["error"] == "not_ready"
            for secret in (user, PG_HOST, name, "postgresql", "5432"):
                assert secret not in body["detail"], (secret, body)
            assert "/v1/model" in body["detail"]  # where an administrator looks
            details = admin_side.get("/v1/model")
            assert details.status_code == 503
            assert name in details.json()["detail"] or PG_HOST in details.json()["detail"]
