"""What the milter adds to an SMTP transaction: a measurement, not a test.

    .venv/bin/python -m tests.gateway.bench [--corpus PATH] [--messages N]

Starts the service, one milter and a private Postfix with two SMTP ports, one without
the milter and one with it, and sends the same messages through both (interleaved, so
drift hits both alike), on persistent SMTP connections. Each message is also scored
directly over HTTP with keep-alive, with the milter's gateway token, the way the milter
calls the service. Prints the
medians; the milter's own cost is the SMTP time with it, less the time without it, less
the service's own latency. Needs root and Postfix, like the end-to-end test.
"""

from __future__ import annotations

import argparse
import itertools
import smtplib
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mailsift.training.corpus import open_source
from tests.gateway.postfix import DOMAIN, Postfix, postfix_missing
from tests.gateway.processes import GatewayProcess, gateway_token
from tests.service.server import Service, message, train

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _messages(corpus: str | None, n: int) -> list[bytes]:
    if corpus:
        return [m.raw for m in itertools.islice(open_source(corpus), n)]
    return [message(i, spammy=i % 2 == 1) for i in range(n)]


def _smtp(s: smtplib.SMTP, raw: bytes) -> float:
    started = time.perf_counter()
    try:
        s.sendmail("bench@remote.test", [f"alice@{DOMAIN}"], raw)
    except smtplib.SMTPResponseException:
        s.rset()  # a rejection is a finished transaction too
    return (time.perf_counter() - started) * 1000


def _ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"median {statistics.median(values):7.2f} ms   p90 {q[-1]:7.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="messages to send (any corpus source); default: generated")
    parser.add_argument("--messages", type=int, default=300, help="how many (default 300)")
    args = parser.parse_args()
    if (why := postfix_missing()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    messages = _messages(args.corpus, args.messages)
    with tempfile.TemporaryDirectory(prefix="mailsift-gateway-bench-") as tmp:
        return _run(Path(tmp), messages, args.corpus or "generated")


def _run(tmp: Path, messages: list[bytes], source: str) -> int:
    env = {"MAILSIFT_OUTBOUND_LEARNING": "false", "MAILSIFT_SPAM_ACTION": "tag"}
    with Service(tmp / "data", env=env) as svc:
        with svc.client() as admin:
            for i in range(12):
                train(admin, message(1000 + i, spammy=False), "ham")
                train(admin, message(1000 + i, spammy=True), "spam")
        token = tmp / "token"
        token.write_text(gateway_token(svc.data_dir, svc.env))
        milter_args = ("--service-url", svc.url, "--token-file", str(token))
        with (
            GatewayProcess("milter", tmp, *milter_args) as milter,
            Postfix(
                listeners={
                    "plain": {},
                    "milter": {
                        "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
                        "milter_default_action": "accept",
                    },
                },
                policy_port=None,
                internal_network="127.0.0.2/32",
            ) as postfix,
            httpx.Client(
                base_url=svc.url,
                headers={"authorization": f"Bearer {token.read_text()}"},
                transport=httpx.HTTPTransport(socket_options=[NODELAY]),
            ) as http,
            smtplib.SMTP("127.0.0.1", postfix.ports["plain"], timeout=60) as plain,
            smtplib.SMTP("127.0.0.1", postfix.ports["milter"], timeout=60) as milter_smtp,
        ):
            plain.ehlo("bench.remote.test")
            milter_smtp.ehlo("bench.remote.test")

            def score(raw: bytes) -> float:
                started = time.perf_counter()
                r = http.post(
                    "/v1/score",
                    params={
                        "direction": "inbound",
                        "mail_from": "bench@remote.test",
                        "rcpt": f"alice@{DOMAIN}",
                        "client_ip": "127.0.0.1",
                        "helo": "bench.remote.test",
                    },
                    content=raw,
                    headers={"content-type": "message/rfc822"},
                )
                r.raise_for_status()
                return (time.perf_counter() - started) * 1000

            for raw in messages[:20]:  # warm up every path
                score(raw), _smtp(plain, raw), _smtp(milter_smtp, raw)
            service, without, with_milter = [], [], []
            for raw in messages:
                service.append(score(raw))
                without.append(_smtp(plain, raw))
                with_milter.append(_smtp(milter_smtp, raw))
    added = [w - p for w, p in zip(with_milter, without, strict=True)]
    print(f"messages: {len(messages)} ({source})")
    print(f"service alone (HTTP /v1/score)   {_ms(service)}")
    print(f"SMTP through Postfix, no milter  {_ms(without)}")
    print(f"SMTP through Postfix + milter    {_ms(with_milter)}")
    print(f"added by the milter path         {_ms(added)}  (per message, paired)")
    overhead = statistics.median(added) - statistics.median(service)
    print(f"milter's own cost (median added - median service) {overhead:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
