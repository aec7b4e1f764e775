"""A private Postfix instance for end-to-end tests: its own config, queue and mailboxes.

Nothing of the system's Postfix is used but its programs: ``main.cf``/``master.cf`` are
written into a fresh directory, the SMTP server listens on a free loopback port, the
test domain's mail is delivered into Maildirs under that directory and every other
domain's mail is discarded, so no mail ever leaves the machine. ``recipient_delimiter``
is ``+``, as the milter's Junk mark needs: ``bob+junk@`` is delivered into bob's Maildir
with ``Delivered-To: bob+junk@…`` in that copy. Postfix's daemons run
as the ``postfix`` user, which must be able to reach the directory: it lives under
``/tmp`` with mode 0755, not in pytest's private tmp tree.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.service.server import free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
SENDMAIL = shutil.which("sendmail", path="/usr/sbin:/usr/lib") or "/usr/sbin/sendmail"
DOMAIN = "example.test"

_MASTER_CF = """\
{smtpd}
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_missing() -> str | None:
    """Why the Postfix tests cannot run here, or None when they can."""
    if not Path(POSTFIX).exists():
        return "Postfix is not installed (.ci/run installs Debian's postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root to start its master process"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user (Postfix is not installed properly)"
    return None


class Postfix:
    """``postfix -c DIR start`` with a generated config; a context manager."""

    def __init__(
        self,
        *,
        listeners: dict[str, dict[str, str]],
        policy_port: int | None,
        internal_network: str,
        mailboxes: tuple[str, ...] = ("alice", "bob", "carol"),
        main: dict[str, str] | None = None,
    ) -> None:
        """``listeners``: name -> main.cf overrides of one SMTP server (each on its own
        port, ``self.ports[name]``), e.g. ``{"smtpd_milters": "inet:127.0.0.1:8472"}``;
        ``main``: settings of main.cf on top of the generated ones (``non_smtpd_milters``)."""
        self.root = Path(tempfile.mkdtemp(prefix="mailsift-postfix-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config = self.root / "conf"
        self.queue = self.root / "queue"
        self.mail = self.root / "mail"
        self.log = self.root / "maillog"
        self.listeners = listeners
        self.ports = {name: free_port() for name in listeners}
        self.policy_port = policy_port
        self.internal_network = internal_network
        self.mailboxes = mailboxes
        self.main = main or {}
        self.running = False

    def _write_config(self) -> None:
        user = pwd.getpwnam("postfix")
        for d in (self.config, self.queue, self.root / "data", self.mail):
            d.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.root / "data", user.pw_uid, user.pw_gid)
        os.chown(self.mail, user.pw_uid, user.pw_gid)
        (self.config / "vmailbox").write_text(
            "".join(f"{box}@{DOMAIN} {DOMAIN}/{box}/\n" for box in self.mailboxes)
        )
        restrictions = "permit_mynetworks, reject_unauth_destination"
        policy = (
            f"check_policy_service inet:127.0.0.1:{self.policy_port}" if self.policy_port else ""
        )
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": "mx.mailsift.test",
            "mydomain": "mailsift.test",
            "mydestination": "",
            "mynetworks": self.internal_network,
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "no",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": str(self.mail),
            "virtual_mailbox_maps": f"texthash:{self.config / 'vmailbox'}",
            "virtual_uid_maps": f"static:{user.pw_uid}",
            "virtual_gid_maps": f"static:{user.pw_gid}",
            "virtual_minimum_uid": "1",
            # bob+junk@ is bob's mailbox: the milter marks a copy for Junk this way.
            "recipient_delimiter": "+",
            # The policy server judges recipients: Postfix's own check must not beat it.
            "smtpd_reject_unlisted_recipient": "no",
            # Nothing leaves the machine: every other domain's mail is thrown away.
            "default_transport": "discard:test",
            "relay_transport": "discard:test",
            "smtpd_relay_restrictions": restrictions,
            "smtpd_recipient_restrictions": policy,
            "milter_protocol": "6",
            "milter_command_timeout": "10s",
            "milter_content_timeout": "30s",
            "smtpd_policy_service_timeout": "10s",
            "delay_warning_time": "0",
            "smtpd_banner": "$myhostname ESMTP",
            **self.main,
        }
        (self.config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        smtpd = "\n".join(
            f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd"
            + "".join(f"\n  -o {key}={value}" for key, value in overrides.items())
            for name, overrides in self.listeners.items()
        )
        (self.config / "master.cf").write_text(_MASTER_CF.format(smtpd=smtpd))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self) -> Postfix:
        self._write_config()
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr}\n{self.maillog()}")
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._postfix("stop")
            self.running = False

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def maillog(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def queue_entries(self) -> list[dict[str, object]]:
        """``postqueue -j``: one dict per queued message (``queue_name`` hold, active …)."""
        done = subprocess.run(
            [POSTQUEUE, "-c", str(self.config), "-j"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def admin(self, program: str, *args: str) -> str:
        """An administrator's ``postsuper``/``postqueue`` command on this instance
        (``admin(POSTSUPER, "-H", queue_id)``); its output, or an error with it."""
        done = subprocess.run(
            [program, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)}: {done.stderr}")
        return done.stdout + done.stderr

    def submit(self, sender: str, recipient: str, raw: bytes) -> None:
        """A local submission: Postfix's own ``sendmail`` command (postdrop, pickup)."""
        done = subprocess.run(
            [SENDMAIL, "-C", str(self.config), "-f", sender, recipient],
            input=raw,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sendmail: {done.stderr.decode(errors='replace')}")

    def delivered(self, mailbox: str) -> list[bytes]:
        """The messages in ``mailbox``'s Maildir ``new/``, oldest first."""
        new = self.mail / DOMAIN / mailbox / "new"
        if not new.exists():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime)]
