"""A labelled set for the DLP detectors, generated in code with a fixed seed.

Positives are valid values (correct check digits, real issuer prefixes and country
lengths, random key material) planted in sentences, CSV rows, HTML and attachments.
Negatives are the numbers and strings mail is full of that a careless detector confuses
with them: Luhn-invalid card numbers, tracking and order numbers, phone numbers, ISBNs,
IMEIs, dates, hashes, UUIDs, documentation examples, version strings, placeholders.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass, field

from mailsift.service.dlp.validate import IBAN_LENGTHS, luhn_valid

__all__ = ["Case", "build_cases"]

B62 = string.ascii_letters + string.digits
B32 = string.ascii_uppercase + "234567"
B64 = B62 + "+/"


@dataclass(frozen=True)
class Case:
    name: str
    expected: frozenset[str]
    """Finding types a correct scan reports (empty for a negative)."""
    text: str = ""
    """Scanned alone (as ``text/plain``) when ``message`` is empty."""
    message: bytes = b""
    secrets: tuple[str, ...] = field(default=())
    """Full planted values: none may appear in any output."""


class Gen:
    """Valid values of every kind, from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def with_luhn(self, body: str) -> str:
        for d in string.digits:
            if luhn_valid(body + d):
                return body + d
        raise AssertionError("unreachable")

    def card(self, brand: str | None = None) -> str:
        prefixes = {
            "visa": ("4", 16),
            "visa13": ("4", 13),
            "mastercard": (self.r.choice(["51", "52", "53", "54", "55"]), 16),
            "mastercard2": (str(self.r.randint(2221, 2720)), 16),
            "amex": (self.r.choice(["34", "37"]), 15),
            "discover": (self.r.choice(["6011", "65", str(self.r.randint(644, 649))]), 16),
            "jcb": (str(self.r.randint(3528, 3589)), 16),
            "diners": (self.r.choice(["36", "300", "305", "38"]), 14),
            "unionpay": ("62" + self.r.choice("0134578"), 16),
        }
        brand = brand or self.r.choice(sorted(prefixes))
        prefix, length = prefixes[brand]
        return self.with_luhn(prefix + self.digits(length - len(prefix) - 1))

    def bad_card(self) -> str:
        good = self.card()
        last = (int(good[-1]) + self.r.randint(1, 9)) % 10
        return good[:-1] + str(last)

    def iban(self, country: str | None = None) -> str:
        country = country or self.r.choice(["DE", "GB", "FR", "NL", "ES", "IT", "BE", "CH", "AT"])
        n = IBAN_LENGTHS[country] - 4
        if country in ("GB", "NL"):
            bban = self.chars(string.ascii_uppercase, 4) + self.digits(n - 4)
        else:
            bban = self.digits(n)
        numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
        check = 98 - int(numeric) % 97
        return f"{country}{check:02d}{bban}"

    def ssn(self) -> str:
        while True:
            area = self.r.randint(1, 899)
            if area != 666:
                break
        return f"{area:03d}-{self.r.randint(1, 99):02d}-{self.r.randint(1, 9999):04d}"

    def pem(self, kind: str = "RSA PRIVATE KEY") -> str:
        body = self.chars(B64, 64 * 12)
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"

    def aws_key_id(self) -> str:
        return self.r.choice(["AKIA", "ASIA"]) + self.chars(B32, 16)

    def aws_secret(self) -> str:
        while True:
            s = self.chars(B64, 40)
            if (
                any(c.isupper() for c in s)
                and any(c.islower() for c in s)
                and any(c.isdigit() for c in s)
            ):
                return s

    def github(self) -> str:
        if self.r.random() < 0.2:
            return f"github_pat_{self.chars(B62, 22)}_{self.chars(B62, 59)}"
        return f"{self.r.choice(['ghp', 'gho', 'ghu', 'ghs', 'ghr'])}_{self.chars(B62, 36)}"

    def slack(self) -> str:
        kind = self.r.choice("bpa")
        return f"xox{kind}-{self.digits(11)}-{self.digits(12)}-{self.chars(B62, 24)}"

    def stripe(self) -> str:
        return f"{self.r.choice(['sk', 'rk'])}_live_{self.chars(B62, self.r.choice([24, 34, 99]))}"

    def google(self) -> str:
        return "AIza" + self.chars(B62 + "_-", 35)

    def jwt(self) -> str:
        def enc(obj: object) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        header = enc({"alg": self.r.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"})
        payload = enc({"sub": self.digits(8), "iat": 1700000000 + self.r.randint(0, 10**6)})
        return f"{header}.{payload}.{self.chars(B62 + '_-', 43)}"

    def password(self) -> str:
        styles = [
            lambda: self.chars(string.ascii_letters, 6) + self.digits(2) + self.r.choice("!#$%&"),
            lambda: (
                self.r.choice(["Summer", "Winter", "Falcon", "Hunter", "Orange"])
                + self.digits(4)
                + "!"
            ),
            lambda: self.chars(B62 + "!@#%^&*", 14),
            lambda: self.chars(string.ascii_lowercase, 5) + self.digits(3),
        ]
        return self.r.choice(styles)()


def grouped(digits: str, sep: str = " ") -> str:
    if len(digits) == 15:
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    if len(digits) == 14:
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def spaced_iban(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def mime(
    subject: str, text: str = "", html: str = "", attachments: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A multipart message with a text part, an optional HTML part and text attachments."""
    boundary = "b0undary42"
    parts = []
    if text:
        parts.append(f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")
    if html:
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
    for name, body in attachments:
        ctype = "text/csv" if name.endswith(".csv") else "application/json"
        parts.append(
            f"Content-Type: {ctype}; charset=utf-8\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{body}\r\n'
        )
    head = (
        "From: Ann Example <ann@example.com>\r\nTo: bob@example.org\r\n"
        f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
    )
    body = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return (head + body).encode("utf-8")


def _positives(g: Gen) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, kinds: set[str], text: str, *secrets: str) -> None:
        cases.append(Case(name, frozenset(kinds), text=text, secrets=secrets))

    card_templates = [
        "Please charge my Visa {c}, expiry 09/27, CVV 123. Thanks!",
        "Card number: {c}",
        "Hi Tom,\nhere are the card details you asked for: {c} exp 11/26\nRegards",
        "Kreditkarte {c} gültig bis 03/28",
        "My number is {c}",
        "Use this credit card for the hotel deposit: {c}.",
        "Tarjeta de crédito: {c} (vence 04/27)",
        "cc: {c} / cvv 456",
        "The corporate Amex ends differently, but the full one is {c}",
        "Payment details\n  Name on card: J. Smith\n  Number: {c}\n  Expires: 08/29",
    ]
    brands = ["visa", "mastercard", "mastercard2", "amex", "discover", "jcb", "diners", "unionpay"]
    for i in range(40):
        card = g.card(brands[i % len(brands)])
        style = i % 3
        shown = card if style == 0 else grouped(card, " " if style == 1 else "-")
        add(f"card-{i}", {"card"}, card_templates[i % len(card_templates)].format(c=shown), card)
    add("card-visa13", {"card"}, f"old visa card {(c := g.card('visa13'))}", c)

    iban_templates = [
        "Please transfer the amount to IBAN {i} (BIC COBADEFFXXX).",
        "Bankverbindung: {i}",
        "Our account: {i}",
        "Wire to {i} by Friday please",
        "IBAN: {i}\nBeneficiary: ACME Ltd",
        "Merci de faire le virement sur le compte {i}.",
    ]
    countries = ["DE", "GB", "FR", "NL", "ES", "IT", "BE", "CH", "AT", "NO", "PL", "SE"]
    for i in range(30):
        iban = g.iban(countries[i % len(countries)])
        shown = spaced_iban(iban) if i % 2 else iban
        add(f"iban-{i}", {"iban"}, iban_templates[i % len(iban_templates)].format(i=shown), iban)

    ssn_templates = [
        "Employee SSN: {s}",
        "Her social security number is {s}.",
        "name,ssn,dob\nMary Major,{s},1980-02-03",
        "SSN {s} on the W-2 form",
        "Please update the record for {s} (social security).",
        "Tax ID {s}",
    ]
    for i in range(24):
        ssn = g.ssn()
        shown = ssn if i % 4 else ssn.replace("-", "")
        add(f"ssn-{i}", {"ssn"}, ssn_templates[i % len(ssn_templates)].format(s=shown), ssn)

    for i, kind in enumerate(
        ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
         "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY", "PGP PRIVATE KEY BLOCK", "PRIVATE KEY"]
    ):  # fmt: skip
        key = g.pem(kind)
        body = key.splitlines()[1]
        add(f"pem-{i}", {"private_key"}, f"Here is the server key, keep it safe:\n\n{key}\n", body)

    for i in range(12):
        key_id, secret = g.aws_key_id(), g.aws_secret()
        if i % 3 == 0:
            text = f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
            add(f"aws-pair-{i}", {"aws_access_key", "aws_secret_key"}, text, key_id, secret)
        elif i % 3 == 1:
            add(f"aws-id-{i}", {"aws_access_key"}, f"the deploy user's key is {key_id}", key_id)
        else:
            text = f"AWS secret key: {secret}\n(the id is in the vault)"
            add(f"aws-secret-{i}", {"aws_secret_key"}, text, secret)

    token_templates = [
        "export TOKEN={t}",
        "Here's my token: {t} - it expires next week",
        'config = {{"token": "{t}"}}',
        "Authorization: Bearer {t}",
    ]
    for kind, make in (
        ("github_token", g.github),
        ("slack_token", g.slack),
        ("stripe_key", g.stripe),
        ("google_api_key", g.google),
        ("jwt", g.jwt),
    ):
        for i in range(12):
            tok = make()
            add(f"{kind}-{i}", {kind}, token_templates[i % len(token_templates)].format(t=tok), tok)

    pw_templates = [
        "Your new account:\nusername: jsmith\npassword: {p}\n",
        "db_url=postgres://app@db/prod pwd={p}",
        'credentials = {{"user": "svc", "password": "{p}"}}',
        "Zugangsdaten:\nBenutzer: mueller\nPasswort: {p}",
        "Identifiant : dupont\nMot de passe : {p}",
        "usuario: garcia\ncontraseña: {p}",
        "WiFi name: Guest\nWiFi password: {p}",
        "Login: admin / Password: {p}",
        "my password is {p}",
        "Wachtwoord: {p}",
    ]
    for i in range(30):
        pw = g.password()
        if i % len(pw_templates) == 8:
            pw = g.chars(string.ascii_letters, 6) + g.digits(3)
        add(f"password-{i}", {"password"}, pw_templates[i % len(pw_templates)].format(p=pw), pw)

    for i, text in enumerate(
        [
            "CONFIDENTIAL\n\nQ3 revenue draft attached.",
            "INTERNAL ONLY - do not forward.\nThe reorg plan is below.",
            "This document is STRICTLY CONFIDENTIAL.",
            "Classification: RESTRICTED\nSee the board minutes.",
            "NOT FOR DISTRIBUTION: preliminary results",
            "Marked INTERNAL USE ONLY by legal.",
        ]
    ):
        add(f"label-{i}", {"label"}, text)

    # Whole messages: subject, HTML, attachments, several kinds at once.
    for i in range(6):
        cards = [g.card() for _ in range(6)]
        csv = "name,card_number,exp,cvv\n" + "\n".join(
            f"Customer {j},{c},0{j + 1}/27,{100 + j}" for j, c in enumerate(cards)
        )
        cases.append(
            Case(
                f"msg-csv-{i}",
                frozenset({"card"}),
                message=mime("export", "see attached", attachments=(("cards.csv", csv),)),
                secrets=tuple(cards),
            )
        )
    for i in range(6):
        card, iban = g.card(), g.iban()
        html = (
            "<html><body><p>Dear customer,</p><table><tr><td>Card</td>"
            f"<td><b>{grouped(card)}</b></td></tr><tr><td>IBAN</td><td>{spaced_iban(iban)}</td>"
            "</tr></table></body></html>"
        )
        cases.append(
            Case(
                f"msg-html-{i}",
                frozenset({"card", "iban"}),
                message=mime("Your payment details", html=html),
                secrets=(card, iban, grouped(card), spaced_iban(iban)),
            )
        )
    for i in range(4):
        key_id, secret, tok = g.aws_key_id(), g.aws_secret(), g.github()
        js = json.dumps({"aws_access_key_id": key_id, "aws_secret_access_key": secret, "gh": tok})
        cases.append(
            Case(
                f"msg-json-{i}",
                frozenset({"aws_access_key", "aws_secret_key", "github_token", "label"}),
                message=mime(
                    "Confidential: creds", "keys attached", attachments=(("env.json", js),)
                ),
                secrets=(key_id, secret, tok),
            )
        )
    return cases


def _negatives(g: Gen) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, text: str) -> None:
        cases.append(Case(name, frozenset(), text=text))

    for i in range(25):
        bad = g.bad_card()
        shown = grouped(bad) if i % 2 else bad
        add(f"neg-luhn-{i}", f"Please charge card {shown}, expiry 09/27.")
    for i in range(15):
        add(f"neg-order-{i}", f"Your order #{g.digits(16)} has shipped. Order total $42.10")
        add(f"neg-tracking-{i}", f"Tracking number: {g.digits(15 + i % 8)} via USPS")
    for i in range(20):
        # Plain long ids with no context either way: some pass Luhn and an issuer prefix
        # by chance, which is the detector's honest false-positive rate.
        add(f"neg-id-{i}", f"Customer ID {g.digits(13 + i % 7)} was merged into the new one.")
    for i in range(4):
        add(f"neg-lot-{i}", f"Lot {g.digits(3)}-{g.digits(2)}-{g.digits(4)} passed inspection.")
    add("neg-ups", "UPS tracking 1Z999AA10123456784, delivery Tuesday")
    add("neg-usps", "USPS: 9400 1000 0000 0000 0000 00")
    for i, phone in enumerate(
        ["+1 (415) 555-0123", "+44 20 7946 0958", "Call 0800 123 4567", "+49 30 12345678",
         "555-123-4567", "Tel. +33 1 23 45 67 89", "phone 1-800-555-0199 ext. 1234",
         "+1 415 555 0100 / +1 415 555 0101", "Fax: (212) 555-0147"]
    ):  # fmt: skip
        add(f"neg-phone-{i}", f"You can reach me at {phone} tomorrow.")
    for i, isbn in enumerate(
        ["ISBN 978-3-16-148410-0", "ISBN-13: 9780306406157", "ISBN 0-306-40615-2",
         "ISSN 0317-8471", "EAN 4006381333931"]
    ):  # fmt: skip
        add(f"neg-isbn-{i}", f"The book ({isbn}) is on order.")
    for i, imei in enumerate(["490154203237518", "356938035643809", "352099001761481"]):
        add(f"neg-imei-{i}", f"Device IMEI {imei} was registered.")
    for i, text in enumerate(
        [
            "Meeting on 2002-08-23 at 14:30, or 23.08.2002, or 08/23/2002.",
            "Build 20020823123456 finished in 1234567890123 ns",
            "version 1.2.3.4567, kernel 2.4.18-3smp, v10.0.19041.1234",
            "git commit 3f786850e387550fdab836ed7e6dc881de23001b",
            "secret sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "request id 550e8400-e29b-41d4-a716-446655440000",
            "pi = 3.14159265358979323846264338327950288",
            "Total: $4,111,111,111.11 in 2002",
            "Masked card **** **** **** 1111 was charged.",
            "Account 1234567890, routing 021000021",
            "Call ID 123 45 6789 from the switch",
            "Part no. 123-45-6789-A and 987-65-4321",
            "SSN rules: 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
            "Sample SSN 078-05-1120 as printed on the wallet card",
            "Example: 123-45-6789",
            "Our zip is 94103-1234 and PO box 12345",
            "Time 12:34:56.789012345678",
            "Coordinates 37.7749295, -122.4194155",
            "Invoice INV-2024-000123-4567 due",
            "docs: AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY (aws example)",
            "jwt.io sample: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
            "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "token: ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "GITHUB_TOKEN=ghp_EXAMPLE0000000000000000000000000000",
            "Stripe test key sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "SLACK_BOT_TOKEN=xoxb-your-bot-token",
            "key=AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN PUBLIC KEY-----\n"
            "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
            "-----END PUBLIC KEY-----",
            'eyJ is how base64 of {" starts; eyJhbGciOi.not-a-token.at-all',
            "Password: ********",
            "password: <your password>",
            "Forgot your password? Click the link below.",
            "Password: reset link below, valid for 24 hours",
            "pwd=${DB_PASSWORD}",
            "The password field is required.",
            "password: (same as before)",
            "Passwords must be at least 8 characters long.",
            "This message is confidential and intended for the addressee only.",
            "Our internal only policy: restricted access to HR files.",
            "IBAN format example: DE89 3704 0044 0532 0130 01 (wrong check digits)",
            "GB00 WEST 1234 5698 7654 32 is not valid",
            "Reference XX12 3456 7890 1234 5678 90",
            "Random hex 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "Base64 blob SGVsbG8gV29ybGQhIEhlbGxvIFdvcmxkISBIZWxsbyBXb3JsZCE=",
            "Lottery numbers 4 8 15 16 23 42 4 8 15 16 23 42",
            "Serial 4539 1488 0343 6467 is the appliance serial",
        ]
    ):
        add(f"neg-misc-{i}", text)
    cases.append(
        Case(
            "neg-msg-newsletter",
            frozenset(),
            message=mime(
                "Weekly digest #4242",
                "Order 100234 shipped. Call 1-800-555-0199. Build 4.1.1111.1111.",
                html="<p>Unsubscribe id 4111-2222-3333</p><p>ISBN 978-3-16-148410-0</p>",
            ),
        )
    )
    return cases


def build_cases(seed: int = 20240823) -> list[Case]:
    g = Gen(seed)
    return _positives(g) + _negatives(g)
