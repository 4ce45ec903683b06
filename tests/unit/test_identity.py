"""Contact and account identity (the spine's normalisation and qualification's accounts),
and the merging of firmographics."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.qualification.domain.identity import (
    account_domain,
    email_domain,
    is_free_mail,
    merge_firmographics,
    registrable_domain,
)
from shared.identity import normalise_domain, normalise_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Foo+Bar@GoogleMail.com ", "foo+bar@gmail.com"),
        ("  Jo.Smith@Acme.COM", "jo.smith@acme.com"),
        ("jo+news@acme.com", "jo+news@acme.com"),
        ("a@googlemail.com", "a@gmail.com"),
        ("\tMixed.Case@Example.co.UK\n", "mixed.case@example.co.uk"),
        ("j.o@gmail.com", "j.o@gmail.com"),  # dots are kept: identity is as typed
        ("jo@acme.com.", "jo@acme.com"),
        # an internationalised domain in one form, its A-label, however it was written
        ("jo@bücher.example", "jo@xn--bcher-kva.example"),
        ("jo@xn--bcher-kva.example", "jo@xn--bcher-kva.example"),
        ("Jo@BÜCHER.example", "jo@xn--bcher-kva.example"),
        ("jo@XN--BCHER-KVA.example", "jo@xn--bcher-kva.example"),
        ("jo@bu\u0308cher.example", "jo@xn--bcher-kva.example"),  # decomposed ü (NFD)
        ("jo@bücher\u3002example", "jo@xn--bcher-kva.example"),  # ideographic full stop
        ("jo@bücher.example.", "jo@xn--bcher-kva.example"),
        ("jo@faß.de", "jo@xn--fa-hia.de"),  # IDNA 2008: ß is its own letter, not ss
        ("jo@пример.рф", "jo@xn--e1afmkfd.xn--p1ai"),
        ("Jö@Bücher.de", "jö@xn--bcher-kva.de"),  # a local part has no ASCII form: lower-cased only
    ],
)
def test_normalise_email(raw, expected):
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Acme.COM", "acme.com"),
        ("acme.com.", "acme.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("mail.Bücher.de", "mail.xn--bcher-kva.de"),
        ("exa_mple.com", "exa_mple.com"),  # ASCII is kept as it is, valid or not
        ("\U0001f600.de", "\U0001f600.de"),  # a name IDNA refuses is kept, lower-cased
    ],
)
def test_normalise_domain(raw, expected):
    assert normalise_domain(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "no-at-sign", "@acme.com", "jo@"])
def test_normalise_email_refuses_what_is_not_an_email(raw):
    with pytest.raises(ValueError):
        normalise_email(raw)


_local = st.text(alphabet=st.characters(blacklist_characters="@", blacklist_categories=("Cs",)), min_size=1)


@given(st.emails())
def test_normalise_email_is_idempotent_on_emails(email):
    once = normalise_email(email)
    assert normalise_email(once) == once


@given(_local, st.sampled_from(["GoogleMail.com", "gmail.com", "Acme.CO.uk", "x.io"]), st.text(" \t\n", max_size=3))
def test_normalise_email_is_idempotent_on_any_text(local, domain, padding):
    raw = f"{padding}{local}@{domain}{padding}"
    try:
        once = normalise_email(raw)
    except ValueError:
        return
    assert normalise_email(once) == once
    assert once == once.strip()


@pytest.mark.parametrize(
    ("email", "expected"),
    [("Jo@Acme.com", "acme.com"), ("x@googlemail.com", "gmail.com"), ("a@mail.example.co.uk", "mail.example.co.uk")],
)
def test_email_domain(email, expected):
    assert email_domain(email) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mail.example.co.uk", "example.co.uk"),
        ("https://www.Acme.co.uk/path", "acme.co.uk"),
        ("http://shop.acme.com:8080/x?y=1", "acme.com"),
        ("acme.com", "acme.com"),
        ("WWW.ACME.COM", "acme.com"),
        ("jo@sales.acme.de", "acme.de"),
        ("acme.github.io", "acme.github.io"),  # private suffix: its own domain
        ("a.b.c.example.com.au", "example.com.au"),
        ("https://www.bücher.de/über", "xn--bcher-kva.de"),  # the email's form: one account
        ("mail.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("shop.пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("localhost", None),
        ("192.168.0.1", None),
        ("", None),
        (None, None),
    ],
)
def test_registrable_domain(value, expected):
    assert registrable_domain(value) == expected


@pytest.mark.parametrize(
    ("domain", "free"),
    [
        ("gmail.com", True),
        ("googlemail.com", True),
        ("GMAIL.COM", True),
        ("outlook.com", True),
        ("hotmail.co.uk", True),
        ("yahoo.com", True),
        ("proton.me", True),
        ("icloud.com", True),
        ("hey.com", True),
        ("acme.com", False),
        ("example.co.uk", False),
        ("GoogleMail.com.", True),
    ],
)
def test_is_free_mail(domain, free):
    assert is_free_mail(domain) is free


@pytest.mark.parametrize(
    ("email", "website", "expected"),
    [
        ("jo@acme.com", None, "acme.com"),
        ("jo@mail.example.co.uk", None, "example.co.uk"),
        ("jo@acme.com", "https://other.io", "acme.com"),  # the email wins
        ("jo@gmail.com", None, None),  # free mail never forms an account
        ("jo@gmail.com", "https://www.Acme.co.uk/about", "acme.co.uk"),
        ("jo@googlemail.com", "gmail.com", None),  # not even through the website
        ("jo@outlook.com", "outlook.com", None),
        ("jo@yahoo.com", "", None),
        ("jo@bücher.de", None, "xn--bcher-kva.de"),
        ("jo@xn--bcher-kva.de", "https://bücher.de", "xn--bcher-kva.de"),
        ("jo@gmail.com", "https://www.bücher.de", "xn--bcher-kva.de"),
    ],
)
def test_account_domain(email, website, expected):
    assert account_domain(email, website) == expected


T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_merge_keeps_source_and_time_per_field():
    merged = merge_firmographics({}, {"company": " Acme ", "title": "CTO", "notes": "x"}, "lead.captured", T0)
    assert merged == {
        "company": {"value": "Acme", "source": "lead.captured", "at": T0.isoformat()},
        "title": {"value": "CTO", "source": "lead.captured", "at": T0.isoformat()},
    }


@pytest.mark.parametrize(
    ("incoming", "at", "expected_title", "expected_source"),
    [
        ({"title": "VP Sales"}, T0 + timedelta(days=1), "VP Sales", "prospect.added"),  # latest wins
        ({"title": "VP Sales"}, T0, "VP Sales", "prospect.added"),  # same time: later fact wins
        ({"title": "VP Sales"}, T0 - timedelta(days=1), "CTO", "lead.captured"),  # older: ignored
        ({"title": ""}, T0 + timedelta(days=1), "CTO", "lead.captured"),  # empty never erases
        ({"title": None}, T0 + timedelta(days=1), "CTO", "lead.captured"),
        ({"title": "   "}, T0 + timedelta(days=1), "CTO", "lead.captured"),
    ],
)
def test_merge_latest_non_empty_value_wins(incoming, at, expected_title, expected_source):
    current = merge_firmographics({}, {"title": "CTO", "company": "Acme"}, "lead.captured", T0)
    merged = merge_firmographics(current, incoming, "prospect.added", at)
    assert merged["title"]["value"] == expected_title
    assert merged["title"]["source"] == expected_source
    assert merged["company"]["value"] == "Acme"
    assert current["title"]["value"] == "CTO"  # the input is not mutated


def test_merge_takes_naive_times_as_utc():
    merged = merge_firmographics({}, {"employees": 250}, "x", datetime(2026, 1, 1))
    assert merged["employees"] == {"value": 250, "source": "x", "at": "2026-01-01T00:00:00+00:00"}
