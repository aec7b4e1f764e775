"""End to end through a real Dovecot: a user moves mail into or out of Junk over IMAP
(imaplib) -> IMAPSieve runs the shipped report-spam.sieve / report-ham.sieve ->
``mailsift-report`` -> ``mailsift report --via imap`` -> the running service, which then
scores that message differently for that user; and at delivery (LMTP) the shipped
deliver-junk.sieve files what the milter marked into Junk.

The private Dovecot reads the files of ``integrations/dovecot/`` installed the way the
README's "Learning from your users' Junk folder" says: 90-mailsift.conf is included
as shipped, with only its install locations pointed into the instance's directory; the
sieve scripts and the wrapper are copied there and the scripts compiled with
``sievec``. One difference: Dovecot never runs mail processes as root, and this suite's
Python usually lives where no other user may look (``/root/.pyenv``), so the wrapper
runs as a ``script`` service as root: the optional variant 90-mailsift.conf documents.

Skipped where Dovecot is not installed, unless ``CI`` is set: there it must run
(``.ci/run`` installs Debian's dovecot-imapd, dovecot-lmtpd and dovecot-sieve).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from mailsift.reasons import PERSONAL_NOT_SPAM, PERSONAL_REPORT
from tests.gateway.processes import gateway_token
from tests.service.server import Service, _started, accepts, free_port, score, wait_for

SHIPPED = Path(__file__).resolve().parents[2] / "integrations" / "dovecot"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
SIEVEC = shutil.which("sievec") or "/usr/bin/sievec"
DOVECONF = shutil.which("doveconf") or "/usr/bin/doveconf"
LIBEXEC = ("/usr/lib/dovecot", "/usr/libexec/dovecot")  # Debian's, then Fedora's
DOMAIN = "example.test"
BOB = f"bob@{DOMAIN}"
EVE = "eve@elsewhere.test"  # a user of this Dovecot the reporter token does not speak for
PASSWORD = "not-a-secret"
MAIL_USER = "mail"  # owns the Maildirs: Dovecot never runs mail processes as root
# Where the README installs the shipped files; the test installs them under its root.
INSTALLED = {
    "/etc/dovecot/sieve/mailsift": "sieve",
    "/usr/local/lib/dovecot/sieve-pipe": "sieve-pipe",
}


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def dovecot_missing() -> str | None:
    """Why the Dovecot tests cannot run here, or None when they can."""
    if not Path(DOVECOT).exists():
        return "Dovecot is not installed (.ci/run installs Debian's dovecot-imapd)"
    if not Path(SIEVEC).exists():
        return "Pigeonhole is not installed (.ci/run installs Debian's dovecot-sieve)"
    if not any(Path(d, "lmtp").exists() for d in LIBEXEC):
        return "Dovecot's LMTP server is not installed (.ci/run installs dovecot-lmtpd)"
    if os.geteuid() != 0:
        return "a private Dovecot instance needs root to switch to its mail user"
    for user in (MAIL_USER, "dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"there is no {user} user (Dovecot is not installed properly)"
    return None


MISSING = dovecot_missing()
pytestmark = pytest.mark.skipif(
    MISSING is not None and not _under_ci(),
    reason=f"{MISSING}; with CI set this fails instead",
)


def relocated(conf: str, root: Path) -> dict[str, str]:
    """The settings of the shipped 90-mailsift.conf that name an install location, with
    that location moved under ``root`` (``key = value`` lines outside comments)."""
    moved: dict[str, str] = {}
    for line in conf.splitlines():
        key, eq, value = line.strip().partition("=")
        if not eq or line.lstrip().startswith("#"):
            continue
        for where, under in INSTALLED.items():
            if where in value:
                moved[key.strip()] = value.strip().replace(where, str(root / under))
    return moved


class Dovecot:
    """A private ``dovecot -F`` with a generated config around the shipped one: its own
    base_dir, state and Maildirs under /tmp, a passwd-file of users with plain
    passwords, IMAP and LMTP on free loopback ports; a context manager."""

    def __init__(self, *, service_url: str, token: str, users: tuple[str, ...]) -> None:
        # Dovecot's processes run as other users, who must reach everything in here:
        # under /tmp with mode 0755, not in pytest's private tmp tree.
        self.root = Path(tempfile.mkdtemp(prefix="mailsift-dovecot-", dir="/tmp"))
        self.root.chmod(0o755)
        self.conf = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.imap_port, self.lmtp_port = free_port(), free_port()
        self.service_url, self.token, self.users = service_url, token, users
        self.compiled: dict[str, subprocess.CompletedProcess[str]] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def _install(self) -> None:
        """The README's steps, into this instance's directory."""
        mail = pwd.getpwnam(MAIL_USER)
        sieve, pipe_bin = self.root / "sieve", self.root / "sieve-pipe"
        for d in (sieve, pipe_bin, self.root / "run", self.root / "state", self.root / "home"):
            d.mkdir(mode=0o755)
        for script in SHIPPED.glob("*.sieve"):
            shutil.copy(script, sieve / script.name)
        shutil.copy(SHIPPED / "mailsift-report", pipe_bin / "mailsift-report")
        (pipe_bin / "mailsift-report").chmod(0o755)
        cli = Path(sys.executable).with_name("mailsift")  # the venv's console script
        if not cli.exists():
            raise RuntimeError(f"no mailsift command beside {sys.executable}")
        token_file = self.root / "dovecot.token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)  # read by the wrapper, here as root
        (pipe_bin / "mailsift-report.conf").write_text(
            f"MAILSIFT={shlex.quote(str(cli))}\n"
            f"TOKEN_FILE={shlex.quote(str(token_file))}\n"
            f"SERVICE_URL={shlex.quote(self.service_url)}\n"
        )
        lines = []
        for user in self.users:
            home = self.root / "home" / user
            home.mkdir(mode=0o700)
            os.chown(home, mail.pw_uid, mail.pw_gid)
            lines.append(f"{user}:{{PLAIN}}{PASSWORD}:{mail.pw_uid}:{mail.pw_gid}::{home}::\n")
        (self.root / "users").write_text("".join(lines))
        shipped = SHIPPED / "90-mailsift.conf"
        moved = "".join(
            f"  {k} = {v}\n" for k, v in relocated(shipped.read_text(), self.root).items()
        )
        self.conf.write_text(f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = {self.root.name}
log_path = {self.log}
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.root}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}

!include {shipped}

# The shipped file's install locations, moved into this instance.
plugin {{
{moved}}}

# The optional variant of 90-mailsift.conf: mailsift-report as a service of its own
# (root here, to reach this suite's Python), the socket right in base_dir.
plugin {{
  sieve_pipe_socket_dir = .
}}
service mailsift-report {{
  executable = script {pipe_bin}/mailsift-report
  user = root
  unix_listener mailsift-report {{
    user = {MAIL_USER}
    mode = 0600
  }}
}}
""")
        for script in sorted(sieve.glob("*.sieve")):  # as the README: sievec each one
            self.compiled[script.name] = subprocess.run(
                [SIEVEC, "-c", str(self.conf), str(script)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

    def start(self, timeout: float = 20.0) -> Dovecot:
        if MISSING is not None:
            pytest.fail(f"CI is set, so the Dovecot tests must run: {MISSING}")
        self._install()
        out = (self.root / "dovecot.out").open("ab")
        self.proc = proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(proc)  # killed at exit if a test dies before stopping it
        up = wait_for(lambda: accepts(self.imap_port) or proc.poll() is not None, timeout)
        if not up or proc.poll() is not None:
            raise RuntimeError(f"dovecot did not start: {self.output()}")
        return self

    def output(self) -> str:
        out = self.root / "dovecot.out"
        text = out.read_text(errors="replace") if out.exists() else ""
        return text + self.logged()

    def logged(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # the master stops its children
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def deliver(self, raw: bytes, rcpt: str, sender: str = "sender@remote.test") -> None:
        """Delivery over LMTP, as Postfix's lmtp client does it (sieve_before runs)."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=30) as lmtp:
            refused = lmtp.sendmail(sender, [rcpt], raw)
        assert not refused, refused

    @contextlib.contextmanager
    def imap(self, user: str) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        try:
            conn.login(user, PASSWORD)
            for box in ("Junk", "Trash"):
                conn.create(box)  # NO when it exists: fine
            yield conn
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()


@dataclass(frozen=True)
class Mine:
    """One recipient's own verdict in a ``/v1/score`` answer."""

    verdict: str
    reasons: list[str]
    fingerprint: str


@dataclass
class Site:
    service: Service
    dovecot: Dovecot
    gateway: httpx.Client

    def scored_for(self, raw: bytes, user: str) -> Mine:
        """``/v1/score`` for ``user`` as the milter asks it; ``user``'s own verdict."""
        answer = score(self.gateway, raw, "inbound", (user,))
        mine = answer["recipients"][0]
        reasons = [r["name"] for r in mine["reasons"]]
        return Mine(mine["verdict"], reasons, answer["fingerprint"])

    def reports(self, fingerprint: str) -> list[str]:
        """The service's log lines of reports of one message (``label=… source=…``)."""
        text = self.service.log_path.read_text(errors="replace")
        return re.findall(rf"report user=\S+ fingerprint={fingerprint} (.*)", text)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("dovecot") / "data"
    # A model still learning: every message is ham for everyone, until a user's report.
    env = {"MAILSIFT_MIN_EXAMPLES_PER_CLASS": "10", "MAILSIFT_LOCAL_DOMAINS": DOMAIN}
    service = Service(data, env=env).start()
    try:
        reporter = gateway_token(
            data,
            service.env,
            "--role",
            "reporter",
            "--name",
            "dovecot",
            "--address",
            f"@{DOMAIN}",
        )
        with (
            service.client(gateway_token(data, service.env)) as gateway,
            Dovecot(service_url=service.url, token=reporter, users=(BOB, EVE)) as dovecot,
        ):
            try:
                yield Site(service, dovecot, gateway)
            finally:
                print(dovecot.logged()[-5000:])
    finally:
        service.kill()


def mail(n: int, sender: str = "", extra: str = "") -> bytes:
    """An ordinary message, each from a sender of its own (a report also judges the
    sender's further mail for that user: one sender per message keeps them apart)."""
    sender = sender or f"news{n}@shop{n}.example"
    return (
        f"From: {sender}\r\nTo: {BOB}\r\nSubject: The quarterly review {n}\r\n"
        f"Message-ID: <dovecot-{n}@remote.test>\r\n{extra}\r\n"
        f"Hi Bob, the quarterly review {n} moved to Thursday; agenda attached.\r\n"
    ).encode()


def uid_of(conn: imaplib.IMAP4, mailbox: str, n: int) -> str | None:
    """The UID of message ``n`` in ``mailbox`` (selected), or None."""
    typ, _ = conn.select(mailbox)
    assert typ == "OK", mailbox
    typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", f"<dovecot-{n}@remote.test>")
    assert typ == "OK", data
    found = data[0].split()
    return found[0].decode() if found else None


def move(conn: imaplib.IMAP4, n: int, source: str, target: str) -> None:
    uid = uid_of(conn, source, n)
    assert uid is not None, f"message {n} is not in {source}"
    typ, data = conn.uid("MOVE", uid, target)
    assert typ == "OK", data
    assert uid_of(conn, target, n) is not None, f"message {n} did not arrive in {target}"


def test_every_shipped_sieve_script_compiles(site: Site) -> None:
    shipped = sorted(p.name for p in SHIPPED.glob("*.sieve"))
    assert shipped == ["deliver-junk.sieve", "report-ham.sieve", "report-spam.sieve"]
    assert sorted(site.dovecot.compiled) == shipped
    for name, done in site.dovecot.compiled.items():
        assert done.returncode == 0, f"sievec {name}: {done.stdout}{done.stderr}"
        assert (site.dovecot.root / "sieve" / name).with_suffix(".svbin").exists()


def test_the_shipped_config_is_used_with_only_its_locations_moved(site: Site) -> None:
    shipped = (SHIPPED / "90-mailsift.conf").read_text()
    assert set(relocated(shipped, site.dovecot.root)) == {
        "imapsieve_mailbox1_before",
        "imapsieve_mailbox2_before",
        "sieve_pipe_bin_dir",
        "sieve_before",
    }
    effective = subprocess.run(
        [DOVECONF, "-c", str(site.dovecot.conf), "plugin"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for setting in (
        "imapsieve_mailbox1_name = Junk",
        "imapsieve_mailbox1_causes = COPY APPEND",
        "imapsieve_mailbox2_from = Junk",
        "sieve_plugins = sieve_imapsieve sieve_extprograms",
    ):
        assert setting in effective, effective


def test_delivery_files_the_milters_marks_into_junk_and_reports_nothing(site: Site) -> None:
    """bob+junk@ (the milter's mark for bob's copy) and X-Mailsift-Verdict: spam (spam
    for everyone) go to Junk; an unmarked copy, and a suspect one, to the INBOX. Filing
    at delivery is no user's report: nothing reaches the service."""
    dovecot = site.dovecot
    dovecot.deliver(mail(1), BOB)
    dovecot.deliver(mail(2), f"bob+junk@{DOMAIN}")
    dovecot.deliver(mail(3, extra="X-Mailsift-Verdict: spam\r\n"), BOB)
    dovecot.deliver(mail(4, extra="X-Mailsift-Verdict: suspect\r\n"), BOB)
    with dovecot.imap(BOB) as conn:
        assert uid_of(conn, "INBOX", 1) and not uid_of(conn, "Junk", 1)
        assert uid_of(conn, "Junk", 2) and not uid_of(conn, "INBOX", 2)
        assert uid_of(conn, "Junk", 3) and not uid_of(conn, "INBOX", 3)
        assert uid_of(conn, "INBOX", 4) and not uid_of(conn, "Junk", 4)
    for n in (1, 2, 3, 4):
        assert site.reports(site.scored_for(mail(n), BOB).fingerprint) == []


def test_moving_into_junk_reports_spam_and_back_out_reports_ham(site: Site) -> None:
    raw = mail(10)
    before = site.scored_for(raw, BOB)  # as the milter scores it on the way in
    assert before.verdict == "ham" and before.reasons == []
    site.dovecot.deliver(raw, BOB)

    with site.dovecot.imap(BOB) as conn:
        move(conn, 10, "INBOX", "Junk")

        def reported_spam() -> bool:
            now = site.scored_for(raw, BOB)
            return now.verdict != "ham" and PERSONAL_REPORT in now.reasons

        assert wait_for(reported_spam, 2), site.dovecot.logged()[-2000:]

        move(conn, 10, "Junk", "INBOX")

        def reported_ham() -> bool:
            now = site.scored_for(raw, BOB)
            return now.verdict == "ham" and now.reasons == [PERSONAL_NOT_SPAM]

        assert wait_for(reported_ham, 2), site.dovecot.logged()[-2000:]
    lines = site.reports(before.fingerprint)
    assert [line.split(" result=")[0] for line in lines] == [
        "label=spam source=imap",
        "label=ham source=imap",
    ]


def test_junk_to_trash_learns_nothing(site: Site) -> None:
    raw = mail(20)
    fingerprint = site.scored_for(raw, BOB).fingerprint
    site.dovecot.deliver(raw, BOB)
    with site.dovecot.imap(BOB) as conn:
        move(conn, 20, "INBOX", "Junk")
        assert wait_for(lambda: PERSONAL_REPORT in site.scored_for(raw, BOB).reasons, 2)
        move(conn, 20, "Junk", "Trash")
    after = site.scored_for(raw, BOB)
    assert after.verdict == "spam" and after.reasons == [PERSONAL_REPORT]
    assert [line.split(" result=")[0] for line in site.reports(fingerprint)] == [
        "label=spam source=imap"  # and no ham report from the move to Trash
    ]


def test_appending_into_junk_reports_spam(site: Site) -> None:
    raw = mail(30)
    site.scored_for(raw, BOB)
    with site.dovecot.imap(BOB) as conn:
        typ, data = conn.append("Junk", None, None, raw)
        assert typ == "OK", data
    now = site.scored_for(raw, BOB)
    assert now.verdict == "spam" and now.reasons == [PERSONAL_REPORT]


def test_copy_and_expunge_into_junk_reports_spam(site: Site) -> None:
    """A client without MOVE copies, flags the original deleted and expunges it."""
    raw = mail(40)
    fingerprint = site.scored_for(raw, BOB).fingerprint
    site.dovecot.deliver(raw, BOB)
    with site.dovecot.imap(BOB) as conn:
        uid = uid_of(conn, "INBOX", 40)
        assert uid is not None
        assert conn.uid("COPY", uid, "Junk")[0] == "OK"
        assert conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
        assert conn.expunge()[0] == "OK"
        assert uid_of(conn, "INBOX", 40) is None and uid_of(conn, "Junk", 40) is not None
    now = site.scored_for(raw, BOB)
    assert now.verdict == "spam" and now.reasons == [PERSONAL_REPORT]
    assert len(site.reports(fingerprint)) == 1


def test_a_refused_report_is_logged_and_the_move_still_happens(site: Site) -> None:
    """Eve's domain is not the reporter token's: the service refuses her report, the
    wrapper's one line is in Dovecot's log, and her message is in Junk all the same."""
    raw = mail(50)
    fingerprint = str(score(site.gateway, raw, "inbound", (EVE,))["fingerprint"])
    site.dovecot.deliver(raw, EVE)
    with site.dovecot.imap(EVE) as conn:
        move(conn, 50, "INBOX", "Junk")
    log = site.dovecot.logged()
    assert re.search(r"mailsift-report: Error: mailsift report: .*", log), log[-2000:]
    assert site.reports(fingerprint) == []
