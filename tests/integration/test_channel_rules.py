"""Channel rules as configuration in the running system (issue 24 item 4): qualification
classifies leads by deploy/config/channels.yaml and records its version on each touch; a
bad file stops it at start naming the rule; ``leadstream rescore --channels`` reclassifies
history by replay. Real broker, real store on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from pipeline_store.models import AttributionCredit, BalanceDay, Contact, Opportunity, SourceRollup, Touch
from pipeline_store.source_rollups import MODELS
from services.pipeline.app import create_app as create_pipeline
from services.qualification.app import create_app
from services.qualification.domain.channels import load_channel_rules
from services.qualification.reclassify import RulesVersionConflict, reclassify_all
from tests.integration.test_pipeline_api import add_key
from tests.integration.test_qualification import BUSINESS, lead, prospect, stack, touch  # noqa: F401 - the fixture
from tests.support import ROOT, leadstream_app, make_settings, serve_app

pytestmark = pytest.mark.timeout(180)

SHIPPED = ROOT / "deploy" / "config" / "channels.yaml"
VERSION = load_channel_rules(SHIPPED).version

# the new rules: partner campaigns are partner, whatever the medium; search referrers are referral
PARTNER_RULE = """
rules:
  - name: partner_campaign
    when: {utm_campaign: {matches: "^partner-"}}
    channel: partner
"""


def new_rules(tmp_path, version: str = "test-2"):  # noqa: ANN001, ANN201
    text = SHIPPED.read_text(encoding="utf-8").replace(f'version: "{VERSION}"', f'version: "{version}"')
    text = text.replace("\nrules:\n", PARTNER_RULE, 1)
    text = text.replace("      referrer_host: {any: [{in: search_engines}, {in: search_ad_sources}, "
                        "{label_in: search_engines}]}\n    channel: organic_search",
                        "      referrer_host: {any: [{in: search_engines}, {in: search_ad_sources}, "
                        "{label_in: search_engines}]}\n    channel: referral")
    path = tmp_path / "channels-new.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_channel_rules(path).version == version
    return path


LEADS = [
    # qualifies at once: its first touch a partner campaign on paid search
    lead("ada@acme-robotics.com", "demo_request", minute=0, utm={"source": "google", "medium": "cpc",
                                                                  "campaign": "partner-q4"}, **BUSINESS),
    lead("ada@acme-robotics.com", "webinar", minute=5, referrer="https://www.bing.com/", **BUSINESS),
    # a newsletter from a search referrer, not qualified
    lead("bob@example.org", "newsletter", minute=1, referrer="https://www.google.com/search?q=leads"),
    # stays what it is
    lead("cy@example.net", "newsletter", minute=2, utm={"source": "linkedin", "medium": "social"}),
]


async def _touches(s_) -> dict[str, tuple]:  # noqa: ANN001
    async with s_.db.reader() as s:
        rows = (await s.execute(select(Touch.event_id, Touch.channel, Touch.channel_rules_version)
                                .where(Touch.motion == "inbound"))).all()
    return {event_id: (channel, version) for event_id, channel, version in rows}


async def _attribution(s_) -> dict[str, tuple]:  # noqa: ANN001
    async with s_.db.reader() as s:
        contacts = {c.email: (c.first_touch_channel, c.last_touch_channel)
                    for c in (await s.execute(select(Contact))).scalars()}
        opportunities = {o.contact_id: (o.first_touch_channel, o.last_touch_channel)
                         for o in (await s.execute(select(Opportunity))).scalars()}
    return {"contacts": contacts, "opportunities": opportunities}


async def _balance_by_channel(s_) -> tuple[dict, dict]:  # noqa: ANN001
    """The motion balance rollups' entrants per first-touch channel, and the contacts'."""
    async with s_.db.reader() as s:
        rollup = dict((await s.execute(select(BalanceDay.channel, func.sum(BalanceDay.entrants))
                                       .group_by(BalanceDay.channel))).all())
        contacts = dict((await s.execute(select(Contact.first_touch_channel, func.count())
                                         .group_by(Contact.first_touch_channel))).all())
    return {k: int(v) for k, v in rollup.items() if v}, {k or "": v for k, v in contacts.items()}


def _cli(s_, tmp_path, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = {**os.environ, "LEADSTREAM_PIPELINE_DATABASE_URL": s_.url, "LEADSTREAM_DATA_DIR": str(tmp_path),
           "LEADSTREAM_LOG_JSON": "false"}
    return subprocess.run([sys.executable, "-m", "leadstream.cli", "rescore", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=90)


async def test_each_touch_records_the_rules_version_and_answers_show_it(stack, tmp_path):  # noqa: F811
    await stack.produce(LEADS[0], prospect("pat@bigco.io", **BUSINESS), touch("pat@bigco.io", "replied"))
    await stack.applied(3)
    async with stack.db.reader() as s:
        rows = {t.motion + ":" + t.event_type.split(".")[2]: (t.channel, t.channel_rules_version)
                for t in (await s.execute(select(Touch))).scalars()}
    # a lead is classified by the rules; a sales touch's channel is the tool's, no rules version
    assert rows == {"inbound:lead": ("paid_search", VERSION), "outbound:prospect": (None, None),
                    "outbound:touch": ("cold_email", None)}
    assert stack.runtime.qualifier.describe()["channels"] == {"version": VERSION, "file": str(SHIPPED)}

    pipeline = create_pipeline(make_settings(stack.broker.bootstrap, tmp_path, service="pipeline",
                                               pipeline_database_url=stack.url))
    async with serve_app(pipeline) as client:
        key = await add_key(pipeline.state.runtime.db, "reader", "pipeline")
        contact = await stack.contact("ada@acme-robotics.com")
        detail = (await client.get(f"/v1/contacts/{contact.id}", headers={"Authorization": f"Bearer {key}"})).json()
    assert [(e["channel"], e["channel_rules_version"]) for e in detail["timeline"]] == [("paid_search", VERSION)]


@pytest.mark.parametrize(("edit", "says", "at"), [
    (lambda t: t.replace('matches: "^(.*cp.*|ppc|retargeting|paid.*)$"}}\n    channel: paid_search',
                         'matches: "^(.*cp.*|ppc|retargeting|paid.*$"}}\n    channel: paid_search'),
     "rule 4 (paid_medium): when.utm_medium.matches: invalid regular expression", 'paid.*$"}}'),
    (lambda t: t.replace("channel: partner\n", "channel: partners\n"), "rule 10 (partner_medium): channel:",
     "channel: partners"),
    (lambda t: t.replace("when: {form_type: webinar}", "when: {}"),
     "rule 29 (webinar_form): a rule needs at least one condition", "- name: webinar_form"),
    (lambda t: t.replace("when: {form_type: event}", "when: {form_typ: event}"),
     "rule 30 (event_form): when.form_typ: unknown field", "when: {form_typ: event}"),
])
def test_a_bad_channels_file_stops_qualification_naming_the_rule(tmp_path, edit, says, at):
    config = tmp_path / "config"
    shutil.copytree(ROOT / "deploy" / "config", config)
    path = config / "channels.yaml"
    text = edit(path.read_text(encoding="utf-8"))
    path.write_text(text, encoding="utf-8")
    settings = make_settings("127.0.0.1:1", tmp_path, service="qualification", config_dir=config)
    with pytest.raises(SystemExit) as stopped:
        create_app(settings)
    message = str(stopped.value)
    (line,) = [n for n, content in enumerate(text.splitlines(), 1) if at in content]  # the line it names
    assert message.startswith(f"qualification: {path}:{line}:") and f"{path}:{line}: {says}" in message, message


async def test_rescore_channels_dry_run_changes_nothing_and_apply_reclassifies_by_replay(stack, tmp_path):  # noqa: F811
    await stack.produce(*LEADS)
    await stack.applied(len(LEADS))
    touches, attribution = await _touches(stack), await _attribution(stack)
    assert sorted(c for c, _ in touches.values()) == ["organic_search", "organic_search", "organic_social",
                                                      "paid_search"]
    assert {v for _, v in touches.values()} == {VERSION}
    ada = await stack.contact("ada@acme-robotics.com")
    assert attribution["opportunities"] == {ada.id: ("paid_search", "paid_search")}  # qualified on its first lead
    path = new_rules(tmp_path)

    dry = _cli(stack, tmp_path, "--channels", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing changed" in dry.stderr
    out = dry.stdout
    assert "channel rules test-2: 3 contacts, 4 inbound touches classified again, 3 change channel" in out, out
    assert "touches organic_search -> referral: 2" in out and "touches paid_search -> partner: 1" in out, out
    contacts = out[out.index("contacts (first touch):"):out.index("opportunities (first touch):")]
    assert "organic_search: 1 -> 0  (-1)" in contacts and "referral: 0 -> 1  (+1)" in contacts, out
    assert "paid_search: 1 -> 0  (-1)" in contacts and "partner: 0 -> 1  (+1)" in contacts, out
    assert "organic_social: 1 -> 1\n" in contacts, out
    assert "opportunities (last touch):\n    paid_search: 1 -> 0  (-1)\n    partner: 0 -> 1  (+1)" in out, out
    assert await _touches(stack) == touches and await _attribution(stack) == attribution

    applied = _cli(stack, tmp_path, "--channels", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == dry.stdout and "applied" in applied.stderr
    after = await _touches(stack)
    assert sorted(c for c, _ in after.values()) == ["organic_social", "partner", "referral", "referral"]
    assert {v for _, v in after.values()} == {"test-2"}  # every inbound touch, moved or not
    attribution = await _attribution(stack)
    assert attribution["contacts"]["ada@acme-robotics.com"] == ("partner", "partner")
    assert attribution["contacts"]["bob@example.org"] == ("referral", "referral")
    assert attribution["contacts"]["cy@example.net"] == ("organic_social", "organic_social")
    assert attribution["opportunities"] == {ada.id: ("partner", "partner")}
    assert (await stack.contact("ada@acme-robotics.com")).updated_at > ada.updated_at
    # the motion balance rollups moved with the contacts' first touches (records' write-back)
    rollup, contacts = await _balance_by_channel(stack)
    assert rollup == contacts == {"partner": 1, "referral": 1, "organic_social": 1}
    # so did the sources rollups, under every model, and the credits name the new channel
    async with stack.db.reader() as session:
        credited = set((await session.execute(select(AttributionCredit.channel))).scalars())
        sources = (await session.execute(
            select(SourceRollup.model, SourceRollup.channel, func.sum(SourceRollup.contacts))
            .where(SourceRollup.grain == "d").group_by(SourceRollup.model, SourceRollup.channel))).all()
    assert credited == {"partner"}
    for model in MODELS:
        assert {c: round(n, 6) for m, c, n in sources if m == model and round(n, 6)} == {
            "partner": 1, "referral": 1, "organic_social": 1}, model

    # the same rules again move nothing; the shipped ones move everything back
    again = await reclassify_all(stack.db, load_channel_rules(path), apply=True)
    assert not again.touches_moved and again.contacts_changed == again.opportunities_changed == 0
    back = await reclassify_all(stack.db, load_channel_rules(SHIPPED), apply=True)
    assert sum(back.touches_moved.values()) == 3 and back.opportunities_changed == 1
    assert await _touches(stack) == touches


async def test_rescore_refuses_a_bad_channels_file_and_no_option(stack, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED.read_text(encoding="utf-8").replace("channel: webinar\n", "channel: webinars\n", 1))
    refused = _cli(stack, tmp_path, "--channels", str(bad))
    assert refused.returncode == 2
    assert f"{bad}:" in refused.stderr and "(webinar_medium): channel:" in refused.stderr, refused.stderr
    assert _cli(stack, tmp_path).returncode == 2


def _latin1_copy(tmp_path):  # noqa: ANN001, ANN202
    """The shipped config with a channels.yaml whose version holds a Latin-1 byte (not UTF-8)."""
    config = tmp_path / "config"
    shutil.copytree(ROOT / "deploy" / "config", config)
    path = config / "channels.yaml"
    path.write_bytes(SHIPPED.read_bytes().replace(f'version: "{VERSION}"'.encode(), b'version: "caf\xe9-1"'))
    return config, path


def test_a_channels_file_that_is_not_utf8_is_refused_at_start_and_by_rescore(tmp_path):
    config, path = _latin1_copy(tmp_path)
    (line,) = [n for n, content in enumerate(path.read_bytes().splitlines(), 1) if b"caf\xe9" in content]
    says = f"{path}:{line}: the channel rules file is not UTF-8 text (byte 0xe9 at column 14): save it as UTF-8"
    settings = make_settings("127.0.0.1:1", tmp_path, service="qualification", config_dir=config)
    with pytest.raises(SystemExit) as stopped:
        create_app(settings)
    assert str(stopped.value) == f"qualification: {says}"
    code, out, err = leadstream_app({"LEADSTREAM_DATA_DIR": str(tmp_path)}, "rescore", "--channels", str(path))
    assert (code, out, err.strip()) == (2, "", says)


def test_channels_check_loads_a_file_alone(tmp_path):
    code, out, err = leadstream_app({}, "channels", "check", str(SHIPPED))
    assert (code, err) == (0, "")
    assert out == f"{SHIPPED}: channel rules {VERSION}: 32 rules, 11 lists, default direct\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED.read_text(encoding="utf-8").replace("channel: webinar\n", "channel: webinars\n", 1))
    code, out, err = leadstream_app({}, "channels", "check", str(bad))
    assert (code, out) == (2, "")
    assert err.startswith(f"{bad}:") and "(webinar_medium): channel:" in err, err
    assert leadstream_app({}, "channels", "check", str(tmp_path / "nope.yaml"))[0] == 2


def test_rescore_without_a_migrated_store_says_so_and_creates_nothing(tmp_path):
    env = {"LEADSTREAM_DATA_DIR": str(tmp_path / "var"), "LEADSTREAM_PIPELINE_DATABASE_URL": None}
    code, out, err = leadstream_app(env, "rescore", "--channels", str(SHIPPED), "--dry-run")
    store = tmp_path / "var" / "pipeline.db"
    assert (code, out) == (1, "")
    assert err == (f"the pipeline store at {store} does not exist: set LEADSTREAM_PIPELINE_DATABASE_URL to the "
                   "store's URL, or run `leadstream migrate`\n")
    assert not (tmp_path / "var").exists()
    store.parent.mkdir()
    store.touch()  # a file that is no store
    code, _, err = leadstream_app(env, "rescore", "--channels", str(SHIPPED))
    assert (code, err) == (1, f"the pipeline store at {store} is not migrated: set LEADSTREAM_PIPELINE_DATABASE_URL "
                              "to the store's URL, or run `leadstream migrate`\n")


async def test_rescore_refuses_changed_rules_under_a_version_that_classified_touches(stack, tmp_path):  # noqa: F811
    await stack.produce(*LEADS)
    await stack.applied(len(LEADS))
    touches, attribution = await _touches(stack), await _attribution(stack)
    assert {v for _, v in touches.values()} == {VERSION}
    # the new rules under the shipped version, which classified these touches: 3 would move
    same_version = new_rules(tmp_path, version=VERSION)
    says = (f"{same_version}: version {VERSION} already classified 3 touches differently; "
            "give the changed rules a new version")
    for dry_run in (("--dry-run",), ()):
        refused = _cli(stack, tmp_path, "--channels", str(same_version), *dry_run)
        assert (refused.returncode, refused.stdout, refused.stderr.strip()) == (2, "", says), refused.stderr
    assert await _touches(stack) == touches and await _attribution(stack) == attribution
    with pytest.raises(RulesVersionConflict, match=f"version {VERSION} already classified 3 touches differently"):
        await reclassify_all(stack.db, load_channel_rules(same_version), apply=False)

    # changed rules that classify every touch of that version as it was are the same rules to it
    harmless = tmp_path / "harmless.yaml"
    harmless.write_text(SHIPPED.read_text(encoding="utf-8").replace(
        "\nrules:\n", "\nrules:\n  - name: billboard\n    when: {utm_medium: billboard}\n    channel: other\n", 1))
    assert load_channel_rules(harmless).version == VERSION
    accepted = _cli(stack, tmp_path, "--channels", str(harmless), "--dry-run")
    assert accepted.returncode == 0 and "0 change channel" in accepted.stdout, accepted.stderr
    # under a new version the changed rules pass, and once applied their version is theirs
    assert _cli(stack, tmp_path, "--channels", str(new_rules(tmp_path, version="test-3"))).returncode == 0
    assert {v for _, v in (await _touches(stack)).values()} == {"test-3"}
