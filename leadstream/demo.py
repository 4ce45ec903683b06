"""``leadstream demo``: a realistic 90-day history seeded through the public APIs only.

Inbound leads go through capture (``POST /v1/leads``), outbound prospects and touches
through outreach (``/v1/prospects``, ``/v1/touches:batch``), and sales decisions through
the pipeline's transitions API, so the seed exercises the real path end to end. The
history leans deliberately on paid search so the dependency warnings have something to say.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx

FIRST = ["Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Radia", "Tim",
         "Frances", "Edsger", "Hedy", "John", "Shafi", "Donald", "Leslie", "Niklaus", "Sophie", "Yukihiro", "Anita"]
LAST = ["Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie", "Liskov", "Thompson",
        "Perlman", "Berners-Lee", "Allen", "Dijkstra", "Lamarr", "McCarthy", "Goldwasser", "Knuth", "Lamport",
        "Wirth", "Wilson", "Matsumoto", "Borg"]
INDUSTRIES = ["software", "fintech", "healthcare", "manufacturing", "retail", "education", "logistics", "media"]
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "CA", "AU", "SE", "ES", "IN", "BR"]
TITLES = ["VP Marketing", "Head of Sales", "Director of Revenue Operations", "CEO", "CTO", "Marketing Manager",
          "Sales Development Representative", "Growth Lead", "Chief Revenue Officer", "Demand Generation Manager",
          "Software Engineer", "Student", "Account Executive", "VP Engineering"]
FREE_MAIL = ["gmail.com", "outlook.com", "yahoo.com", "hotmail.com"]
WORDS = ["acme", "globex", "initech", "umbrella", "hooli", "vandelay", "stark", "wayne", "tyrell", "cyberdyne",
         "soylent", "wonka", "aperture", "blackmesa", "massive", "oscorp", "nakatomi", "gringotts", "monarch",
         "pied", "piper", "dunder", "mifflin", "prestige", "wernham", "octan", "zorg", "abstergo", "rekall"]
TLDS = ["com", "io", "co.uk", "de", "fr", "com.au", "nl", "ca"]

# (channel, share of inbound, how to express it to capture)
INBOUND = [
    ("paid_search", 0.50, {"utm": {"source": "google", "medium": "cpc"}}),
    ("organic_search", 0.14, {"referrer": "https://www.google.com/"}),
    ("paid_social", 0.08, {"utm": {"source": "linkedin", "medium": "paid_social"}}),
    ("organic_social", 0.06, {"referrer": "https://www.linkedin.com/feed/"}),
    ("email", 0.10, {"utm": {"source": "newsletter", "medium": "email"}}),
    ("referral", 0.07, {"referrer": "https://www.g2.com/products/leadstream/reviews"}),
    ("webinar", 0.06, {"utm": {"source": "zoom", "medium": "webinar"}}),
    ("direct", 0.07, {}),
]
CAMPAIGNS = {
    "paid_search": ["brand-search", "competitor-conquest", "pipeline-analytics-generic"],
    "paid_social": ["linkedin-abm-q4", "linkedin-thought-leadership"],
    "email": ["monthly-newsletter", "nurture-track-a"],
    "webinar": ["revops-live-2026"],
}
FORM_TYPES = [("demo_request", 0.22), ("contact_sales", 0.06), ("pricing", 0.07), ("trial_signup", 0.08),
              ("webinar", 0.12), ("content_download", 0.25), ("newsletter", 0.20)]
SEQUENCES = [("cold_email", "enterprise-outbound-q4"), ("cold_email", "mid-market-fintech"),
             ("cold_call", "power-hour"), ("social", "linkedin-connect"), ("video", "vidyard-personal")]
OUTCOME_PATHS = [  # a prospect's sequence, weighted
    (["sent", "delivered", "opened"], 0.30),
    (["sent", "delivered", "opened", "clicked"], 0.15),
    (["sent", "delivered", "opened", "replied", "positive_reply"], 0.08),
    (["sent", "delivered", "opened", "replied", "meeting_booked"], 0.07),
    (["sent", "bounced"], 0.08),
    (["sent", "delivered", "opened", "unsubscribed"], 0.05),
    (["sent", "delivered", "negative_reply", "not_interested"], 0.07),
    (["sent", "delivered"], 0.20),
]


# --balanced: prospecting that books more meetings (fewer touches per opportunity)
BALANCED_OUTCOME_PATHS = [
    (["sent", "delivered", "opened"], 0.25),
    (["sent", "delivered", "opened", "clicked"], 0.10),
    (["sent", "delivered", "opened", "replied", "positive_reply"], 0.15),
    (["sent", "delivered", "opened", "replied", "meeting_booked"], 0.15),
    (["sent", "bounced"], 0.05),
    (["sent", "delivered", "negative_reply", "not_interested"], 0.10),
    (["sent", "delivered"], 0.20),
]
# The accounts and people sales researches (the control outbound gives over who enters): the
# industries, sizes and seniorities the shipped policy (deploy/config/scoring.yaml) grades A/B.
TARGET_INDUSTRIES = ("software", "fintech")
TARGET_TITLES = ["VP Marketing", "Head of Sales", "Director of Revenue Operations", "Chief Revenue Officer",
                 "VP Sales", "Head of Growth"]

RETRIES = 20


def _pick(rng: random.Random, weighted):  # noqa: ANN001, ANN202
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


@dataclass
class DemoPlan:
    leads: list[dict] = field(default_factory=list)
    prospects: list[dict] = field(default_factory=list)
    touches: list[dict] = field(default_factory=list)


def plan(seed: int, contacts: int, now: datetime, days: int = 90, *, balanced: bool = False) -> DemoPlan:
    """Everything the demo will send, decided up front from the seed (deterministic).

    By default the history leans on inbound, and on paid search within it, while sales
    prospects a researched target list: most qualified pipeline is inbound but its entrants
    fit far less often than outbound's prospects (the balance diagnoses ``weak_control``, and
    the sources answer warns about paid search). ``balanced``: both motions alike in volume,
    fit and effort, inbound spread over its channels, so no diagnosis fires."""
    rng = random.Random(seed)
    companies = []
    for i in range(max(20, contacts // 4)):
        name = f"{rng.choice(WORDS)}{rng.choice(WORDS)}"
        domain = f"{name}{i}.{rng.choice(TLDS)}"
        companies.append({"company": name.title(), "domain": domain, "industry": rng.choice(INDUSTRIES),
                          "employees": rng.choice([8, 25, 60, 120, 250, 600, 1500, 4000, 12000]),
                          "country": rng.choice(COUNTRIES)})
    out = DemoPlan()
    n_inbound = int(contacts * (0.45 if balanced else 0.65))
    shared_accounts = companies[: len(companies) // 5]  # touched by both motions
    targets = [c for c in companies if c["industry"] in TARGET_INDUSTRIES and 50 <= c["employees"] <= 4000]
    inbound_channels = [(c, 1.0 if balanced else w) for c, w, _ in INBOUND]
    for i in range(contacts):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        inbound = i < n_inbound
        researched = not inbound and not balanced and targets
        company = rng.choice(targets if researched else shared_accounts if rng.random() < 0.3 else companies)
        at = now - timedelta(days=rng.random() * days, minutes=rng.randint(0, 600))
        free = inbound and not balanced and rng.random() < 0.15
        email = f"{first}.{last}{i}@{rng.choice(FREE_MAIL) if free else company['domain']}".lower()
        title = rng.choice(TARGET_TITLES if researched else TITLES)
        person = {"email": email, "first_name": first, "last_name": last, "title": title,
                  "company": company["company"], "industry": company["industry"],
                  "employees": company["employees"], "country": company["country"],
                  "website": f"https://www.{company['domain']}"}
        if inbound:
            channel = _pick(rng, inbound_channels)
            how = next(h for c, _, h in INBOUND if c == channel)
            form_type = _pick(rng, FORM_TYPES)
            if channel == "paid_search" and not balanced and rng.random() < 0.6:
                form_type = "demo_request"  # paid search carries the high-intent pipeline
            lead = person | {k: (dict(v) if isinstance(v, dict) else v) for k, v in how.items()}
            if channel in CAMPAIGNS:
                lead.setdefault("utm", {})["campaign"] = rng.choice(CAMPAIGNS[channel])
            lead |= {"form_type": form_type, "form_id": f"{form_type.replace('_', '-')}-form",
                     "page_url": f"https://www.example.com/{form_type.replace('_', '-')}",
                     "occurred_at": at.isoformat(), "consent": {"marketing": rng.random() < 0.7}}
            if form_type in ("content_download", "webinar"):
                lead["lead_magnet"] = "state-of-b2b-pipeline-2026" if form_type == "content_download" else "revops-live"
            out.leads.append(lead)
            if not balanced and rng.random() < 0.12:  # some inbound people are also prospected: blended
                out.prospects.append(person | {"owner": f"rep{rng.randint(1, 6)}@ourco.example",
                                               "list": "inbound-follow-up",
                                               "occurred_at": (at + timedelta(hours=2)).isoformat()})
        else:
            channel, sequence = rng.choice(SEQUENCES)
            owner = f"rep{rng.randint(1, 6)}@ourco.example"
            out.prospects.append(person | {"owner": owner, "list": sequence, "source": "sales-navigator",
                                           "occurred_at": at.isoformat()})
            for step, outcome in enumerate(_pick(rng, BALANCED_OUTCOME_PATHS if balanced else OUTCOME_PATHS), start=1):
                touch_at = min(at + timedelta(days=step * rng.uniform(0.5, 3)), now - timedelta(minutes=1))
                out.touches.append({"email": email, "channel": channel, "outcome": outcome, "rep": owner,
                                    "sequence": sequence, "step": step, "occurred_at": touch_at.isoformat(),
                                    "external_id": f"demo-{seed}-{i}-{step}"})
    out.touches.sort(key=lambda t: t["occurred_at"])
    return out


async def send(client: httpx.AsyncClient, url: str, body: dict, headers: dict | None = None,
               via: httpx.AsyncClient | None = None) -> httpx.Response:
    """POST ``body``, through ``via`` if given (a visitor's own address), retried while rate
    limited (429: after its Retry-After) or while the connection breaks with the request sent
    (a kept-alive connection the server closed meanwhile, on a loaded machine). Every request
    the demo sends may be repeated: leads and transitions carry an Idempotency-Key, touches an
    external_id, and a prospect sent twice merges into the same contact. An error answer
    other than 409 raises."""
    r, broken = None, None
    for _ in range(RETRIES):
        try:
            r = await (via or client).post(url, json=body, headers=headers)
        except httpx.ConnectError:
            if via is None:
                raise
            via = None  # this system has no such loopback address: one address, paced by 429s
            continue
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as error:
            r, broken = None, error
            await asyncio.sleep(0.2)
            continue
        if r.status_code != 429:
            break
        # a rate limit is a pause, not a failure; retries carry the same idempotency key
        await asyncio.sleep(min(float(r.headers.get("Retry-After") or 1), 30.0))
    if r is None:
        raise broken or RuntimeError(f"{url}: no answer")
    if r.status_code >= 400 and r.status_code != 409:
        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
    return r


async def seed(
    *,
    capture_url: str,
    outreach_url: str,
    pipeline_url: str,
    api_key: str,
    seed_value: int = 7,
    contacts: int = 2000,
    progress: Callable[[int], None] | None = None,
    settle_timeout: float = 120.0,
    balanced: bool = False,
) -> dict[str, int]:
    """Send the plan through the APIs, wait for qualification, then make sales decisions."""
    rng = random.Random(seed_value + 1)
    demo = plan(seed_value, contacts, datetime.now(timezone.utc), balanced=balanced)
    auth = {"Authorization": f"Bearer {api_key}"}
    # idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them
    limits = httpx.Limits(max_connections=16, keepalive_expiry=2.0)
    sent = {"leads": 0, "prospects": 0, "touches": 0, "accepted": 0, "won": 0, "lost": 0}
    tick = progress or (lambda _: None)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        sem = asyncio.Semaphore(16)

        async def post(url: str, body: dict, headers: dict | None = None, via: httpx.AsyncClient | None = None
                       ) -> httpx.Response:
            async with sem:
                r = await send(client, url, body, headers, via)
                tick(1)
                return r

        # Visitors come from addresses of their own (capture rate-limits per client address and
        # believes no X-Forwarded-For by default): on a loopback capture, from 127.0.0.2-65
        # (Linux answers the whole 127/8).
        visitors = _visitor_clients(capture_url)
        try:
            await asyncio.gather(*(post(f"{capture_url}/v1/leads", lead, {"Idempotency-Key": f"demo-{seed_value}-{n}"},
                                        visitors[n % len(visitors)] if visitors else None)
                                   for n, lead in enumerate(demo.leads)))
        finally:
            for visitor in visitors:
                await visitor.aclose()
        sent["leads"] = len(demo.leads)
        await asyncio.gather(*(post(f"{outreach_url}/v1/prospects", p, auth) for p in demo.prospects))
        sent["prospects"] = len(demo.prospects)
        for start in range(0, len(demo.touches), 500):
            chunk = demo.touches[start:start + 500]
            await post(f"{outreach_url}/v1/touches:batch", {"touches": chunk}, auth)
            tick(len(chunk) - 1)
        sent["touches"] = len(demo.touches)

        opportunities = await _settled_opportunities(client, pipeline_url, auth, settle_timeout)
        # sales' decisions are drawn in the opportunities' order (the seed decides them all), then
        # sent: each opportunity's moves in order, sixteen opportunities at a time
        moves = [_decisions(rng, opp, seed_value) for opp in opportunities]

        async def decide(opp_moves: list[tuple[str, dict, dict]]) -> None:
            for path, body, key in opp_moves:
                await post(f"{pipeline_url}{path}", body, auth | key)

        await asyncio.gather(*(decide(m) for m in moves if m))
        counted = {"opportunity": "accepted", "customer": "won", "lost": "lost"}  # a disqualification is not
        for m in moves:
            for _, body, _ in m:
                if body["to"] in counted:
                    sent[counted[body["to"]]] += 1
    return sent


def _decisions(rng: random.Random, opp: dict, seed_value: int) -> list[tuple[str, dict, dict]]:
    """What sales does with one opportunity, drawn from ``rng``: (path, body, idempotency
    header) of each move, in order (none for most that are not ``sql``)."""
    roll = rng.random()
    path = f"/v1/opportunities/{opp['id']}/transitions"
    key = f"demo-{seed_value}-{opp['id']}"
    if opp["stage"] != "sql" or roll > 0.7:
        return []
    if roll < 0.1:
        return [(path, {"to": "disqualified", "reason": "no budget this year"}, {"Idempotency-Key": key})]
    # sales mostly names the expected amount on accepting; without one, scoring.yaml's
    # expected amount of the motion (if it sets one) stands in, marked estimated
    expected = rng.choice([6000, 12000, 18000, 24000, 36000, 60000, 90000])
    accept: dict[str, object] = {"to": "opportunity", "reason": "discovery call held"}
    if rng.random() < 0.8:
        accept["amount"] = expected
    out = [(path, accept, {"Idempotency-Key": key})]
    decide = rng.random()
    # the deal closes for more or less than expected
    amount = int(expected * rng.choice([0.5, 0.75, 1.0, 1.0, 1.25, 1.5]))
    if decide < 0.35:
        out.append((path, {"to": "customer", "amount": amount, "reason": "signed"}, {"Idempotency-Key": key + "-won"}))
    elif decide < 0.55:
        out.append((path, {"to": "lost", "amount": amount,
                           "reason": rng.choice(["chose a competitor", "no decision", "price"])},
                    {"Idempotency-Key": key + "-lost"}))
    return out


def _visitor_clients(capture_url: str, count: int = 64) -> list[httpx.AsyncClient]:
    """Clients bound to loopback addresses of their own when capture listens on loopback."""
    if httpx.URL(capture_url).host not in ("127.0.0.1", "localhost"):
        return []
    # one TLS context for all (each transport would load the CA bundle: ~27 ms of CPU apiece)
    tls = httpx.create_ssl_context()
    return [httpx.AsyncClient(timeout=30, transport=httpx.AsyncHTTPTransport(
                verify=tls, local_address=f"127.0.0.{2 + i}", limits=httpx.Limits(keepalive_expiry=2.0)))
            for i in range(count)]


async def _settled_opportunities(
    client: httpx.AsyncClient, pipeline_url: str, auth: dict, timeout: float
) -> list[dict]:
    """Wait until qualification has caught up (the count of opportunities stops growing)."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    items: list[dict] = []
    while time.monotonic() < deadline:
        items = await _all_opportunities(client, pipeline_url, auth)
        stable = stable + 1 if len(items) == last else 0
        if stable >= 3 and items:
            break
        last = len(items)
        await asyncio.sleep(1.0)
    # ids are random; the contact's email and the qualifying moment are the seed's own
    return sorted(items, key=lambda o: (o["email"], o["qualified_at"], o["id"]))


async def _all_opportunities(client: httpx.AsyncClient, pipeline_url: str, auth: dict) -> list[dict]:
    items, cursor = [], None
    while True:
        params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        r = await client.get(f"{pipeline_url}/v1/opportunities", params=params, headers=auth)
        r.raise_for_status()
        page = r.json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items
