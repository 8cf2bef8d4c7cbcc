"""Texts with personal data in five scripts: what the traffic log's redaction must mask.

Shared by ``tests/test_serving_traffic.py`` and ``benchmarks/payload_log.py``.
"""

from __future__ import annotations

# (text, the personal data in it): none of the second may be in the log.
PII = [
    (
        "Write to john.doe@example.com or call +1 (415) 555-0132 about the shuttle launch.",
        ["john.doe@example.com", "555-0132", "(415)"],
    ),
    (
        "Card 4111 1111 1111 1111, account 000123456789, from 192.168.10.20 via "
        "https://bank.example.org/login?user=jd",
        ["4111 1111 1111 1111", "000123456789", "192.168.10.20", "bank.example.org"],
    ),
    (
        "IPv6 2001:db8:85a3::8a2e:370:7334 and fe80::1%eth0 and ::ffff:10.0.0.7 on "
        "www.example.net",
        ["2001:db8:85a3::8a2e:370:7334", "fe80::1", "10.0.0.7", "www.example.net"],
    ),
    (
        "Bitte rufen Sie 030 1234 5678 an oder schreiben Sie an anna.schmidt@beispiel.de, "
        "IBAN DE89 3704 0044 0532 0130 00.",
        ["030 1234 5678", "anna.schmidt@beispiel.de", "3704 0044 0532 0130"],
    ),
    (
        "Позвоните Ивану: +7 495 123-45-67, почта иван.петров@пример.рф, счёт "
        "40817810099910004312.",
        ["+7 495 123-45-67", "иван.петров@пример.рф", "40817810099910004312"],
    ),
    (
        "電話は０３－１２３４－５６７８、メールはtaro.yamada@example.jpまで。"
        "カード番号4242-4242-4242-4242で支払いました。",
        ["１２３４－５６７８", "taro.yamada@example.jp", "4242-4242-4242-4242"],
    ),
    (
        "اتصل على ٠٥٠١٢٣٤٥٦٧ أو راسل ali@example.sa من 10.1.2.3",
        ["٠٥٠١٢٣٤٥٦٧", "ali@example.sa", "10.1.2.3"],
    ),
]
# What redaction must leave alone.
PLAIN = "The launch on 2024-01-15 at 12:30:45 cost 3.5 million; version 2.0, 42 posts."


def secrets() -> list[str]:
    """Every piece of personal data in :data:`PII`."""
    return [secret for _, found in PII for secret in found]
