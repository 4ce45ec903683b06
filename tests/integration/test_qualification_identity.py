"""One person, one contact: an address written with an internationalised domain and again
with its punycode domain, posted through capture and applied by qualification (issue 26,
item 12), on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pipeline_store.models import Account, Contact
from services.capture.app import create_app as create_capture
from tests.integration import test_qualification
from tests.integration.test_qualification import Stack
from tests.support import make_settings, serve_app

pytestmark = pytest.mark.timeout(120)

stack = test_qualification.stack  # the qualification service on its own broker, as there

COMPANY = {"company": "Bücher GmbH", "title": "Head of Marketing", "employees": 120, "country": "DE"}


async def test_unicode_and_punycode_domains_are_one_contact_and_one_account(stack: Stack, database_factory, tmp_path):
    settings = make_settings(stack.broker.bootstrap, tmp_path, service="capture",
                             capture_database_url=await database_factory("capture"))
    async with serve_app(create_capture(settings)) as capture:
        posted = [
            {"email": "Jo@Bücher.de", "form_type": "newsletter", **COMPANY},
            {"email": "jo@xn--bcher-kva.de", "form_type": "content_download", "lead_magnet": "report"},
            {"email": "JO@BU\u0308CHER.DE", "form_type": "webinar"},  # decomposed Ü
            # someone else, a free-mail address with the company's website in the other form
            {"email": "kim@gmail.com", "form_type": "newsletter", "website": "https://www.xn--bcher-kva.de/"},
        ]
        for body in posted:
            response = await capture.post("/v1/leads", json=body)
            assert response.status_code == 202, response.text
        await stack.applied(len(posted))

    async with stack.db.reader() as s:
        contacts = {c.email: c for c in (await s.execute(select(Contact))).scalars()}
        accounts = list((await s.execute(select(Account))).scalars())
    assert set(contacts) == {"jo@xn--bcher-kva.de", "kim@gmail.com"}
    jo = contacts["jo@xn--bcher-kva.de"]
    assert jo.email_as_typed == "Jo@Bücher.de"  # the address as first typed, for display
    assert jo.account_domain == contacts["kim@gmail.com"].account_domain == "xn--bcher-kva.de"
    assert [a.domain for a in accounts] == ["xn--bcher-kva.de"]
    assert accounts[0].company == "Bücher GmbH"
    # the pipeline API finds them by either form
    from services.pipeline import service as pipeline
    from services.pipeline.schemas import ContactFilters

    async with stack.db.reader() as s:
        for email in ("jo@bücher.de", "JO@XN--BCHER-KVA.DE"):
            page = await pipeline.list_contacts(s, ContactFilters(email=email))
            assert [c.email for c in page.items] == ["jo@xn--bcher-kva.de"], email
        page = await pipeline.list_contacts(s, ContactFilters(account="Bücher.de"))
        assert {c.email for c in page.items} == {"jo@xn--bcher-kva.de", "kim@gmail.com"}
        assert (await pipeline.account_view(s, "bücher.de")).domain == "xn--bcher-kva.de"
