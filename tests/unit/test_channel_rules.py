"""Channel rules as configuration: the shipped file is the code's derivation, exactly; a file
that does not load names its line, its rule and the reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.qualification.domain.channels import (
    INBOUND_CHANNELS,
    ChannelRulesError,
    lead_fields,
    load_channel_rules,
    parse_channel_rules,
)
from tests.unit.channel_reference import derive_inbound_channel as reference

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "config" / "channels.yaml"
RULES = load_channel_rules(SHIPPED)

# pieces real leads are made of, so random inputs reach every rule (plain random text
# rarely names a search engine or a webmail host)
PIECES = [
    "", " ", "google", "Google", "bing", "cpc", "CPC", "ppc", "paid", "paid social", "paidsearch", "retargeting",
    "display", "organic", "social", "sm", "email", "e mail", "newsletter", "referral", "affiliate", "event",
    "webinar", "content", "(direct)", "(none)", "(not set)", "none", "facebook", "fb", "linkedin", "x", "yt",
    "adwords", "microsoft", "so", "so.com", "foo.so", "m.facebook.com", "www.google.co.uk", "search.yahoo.com",
    "lnkd.in", "t.co", "mail.google.com", "android.gm", "https://", "http://", "//", "android-app://",
    "com.google.android.gm", "com.google.android.googlequicksearchbox", "com.linkedin.android", "com.example.app",
    "http://[::1", "https://www.leadstream.io/demo", "https://leadstream.io/pricing", "?", "&", "=",
    "utm_source", "utm_medium", "gclid", "msclkid", "li_fat_id", "ttclid", "/", ".", ":", "@", "news.ycombinator.com",
    "webinar", "content_download", "demo_request",
]
piece = st.sampled_from(PIECES)
value = st.one_of(st.none(), piece, st.lists(piece, max_size=4).map("".join), st.text(max_size=10))
page = st.one_of(st.none(), st.builds(
    lambda base, q: base + ("?" + "&".join(q) if q else ""),
    st.sampled_from(["https://www.leadstream.io/demo", "https://leadstream.io/", "::::", "", "https://other.dev/x"]),
    st.lists(st.sampled_from(["utm_source=google", "utm_medium=cpc", "utm_source=linkedin", "utm_medium=social",
                              "utm_campaign=q4", "gclid=1", "li_fat_id=2", "msclkid=3", "x=1", "utm_source=",
                              "utm_medium=Email"]), max_size=3),
), value)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value, value, value, page, value)
def test_the_shipped_rules_are_the_codes_derivation(utm_source, utm_medium, referrer, page_url, form_type):
    expected = reference(utm_source, utm_medium, referrer, page_url, form_type)
    assert RULES.classify(utm_source, utm_medium, referrer, page_url, form_type) == expected


def test_the_shipped_rules_load_with_a_version():
    assert RULES.version == "2026-12-02.1"
    assert RULES.default == "direct"
    assert {rule.channel for rule in RULES.rule_set.rules} | {RULES.default} <= set(INBOUND_CHANNELS)


@pytest.mark.parametrize(("lead", "rule"), [
    (dict(utm_source="linkedin", utm_medium="cpc", referrer=None), "paid_medium_social_source"),
    (dict(utm_source=None, utm_medium=None, referrer="https://www.google.de/"), "search_referrer"),
    (dict(utm_source=None, utm_medium=None, referrer="https://leadstream.io/x", page_url="https://www.leadstream.io/"),
     None),
    (dict(utm_source=None, utm_medium=None, referrer=None, form_type="webinar"), "webinar_form"),
])
def test_the_first_rule_that_holds_names_the_channel(lead, rule):
    assert RULES.rule_for(lead_fields(**lead)) == rule


def test_a_lead_as_stored_is_classified_from_its_event_data():
    data = {"email": "a@b.c", "utm": {"source": "google", "medium": "cpc", "campaign": "q4"},
            "referrer": None, "page_url": "https://www.leadstream.io/demo", "form_type": "demo_request"}
    assert RULES.classify_lead(data) == "paid_search"
    assert RULES.classify_lead({"email": "a@b.c"}) == "direct"


def test_every_field_and_matcher_of_a_custom_file():
    rules = parse_channel_rules("""
version: "custom-1"
lists:
  partners: [Acme, globex]
rules:
  - name: partner_campaign
    when: {utm_campaign: {matches: "^partner-"}}
    channel: partner
  - name: partner_source
    when: {utm_source: {in: partners}}
    channel: partner
  - name: any_click_id
    when: {click_id: {present: true}}
    channel: paid_search
  - name: internal_webinar
    when: {referrer_internal: true, form_type: {any: [{equals: webinar}, {in: [event]}]}}
    channel: webinar
  - name: no_referrer
    when: {referrer: {present: false}, referrer_scheme: {present: false}}
    channel: direct
default: other
""", "custom.yaml")
    assert rules.classify("x", "y", None, utm_campaign="Partner-Q4") == "partner"
    assert rules.classify("ACME", None, None) == "partner"  # lists compare without case
    assert rules.classify(None, None, None, "https://a.io/?foo=1") == "paid_search"
    assert rules.classify(None, None, "https://www.a.io/", "https://a.io/", "event") == "webinar"
    assert rules.classify(None, None, "https://b.io/", "https://a.io/", "event") == "other"
    assert rules.classify(None, None, None) == "direct"


GOOD_RULE = "  - name: fine\n    when: {utm_source: google}\n    channel: organic_search\n"


def _file(rules: str, lists: str = "lists:\n  engines: [google]\n") -> str:
    return f'version: "t-1"\n{lists}rules:\n{GOOD_RULE}{rules}'


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("rules", "needle", "says"), [
    ("  - name: bad_regex\n    when: {utm_medium: {matches: \"^(cpc\"}}\n    channel: paid_search\n",
     "^(cpc", "rule 1 (bad_regex): when.utm_medium.matches: invalid regular expression"),
    ("  - name: unknown_field\n    when: {utm_sorce: google}\n    channel: paid_search\n",
     "utm_sorce", "rule 1 (unknown_field): when.utm_sorce: unknown field"),
    ("  - name: no_condition\n    when: {}\n    channel: paid_search\n",
     "name: no_condition", "rule 1 (no_condition): a rule needs at least one condition"),
    ("  - name: no_when\n    channel: paid_search\n", "name: no_when", "rule 1 (no_when): when: Field required"),
    ("  - name: unknown_channel\n    when: {utm_source: google}\n    channel: billboards\n",
     "channel: billboards", "rule 1 (unknown_channel): channel: Input should be"),
    ("  - name: unknown_list\n    when: {utm_source: {in: engnes}}\n    channel: organic_search\n",
     "in: engnes", "rule 1 (unknown_list): when.utm_source.in: unknown list 'engnes' (lists: engines)"),
    ("  - name: two_operators\n    when: {utm_source: {equals: a, present: true}}\n    channel: other\n",
     "equals: a, present", "rule 1 (two_operators): when.utm_source: a matcher has exactly one of"),
    ("  - name: unknown_operator\n    when: {utm_source: {contains: a}}\n    channel: other\n",
     "contains: a", "rule 1 (unknown_operator): when.utm_source.contains: unknown field"),
    ("  - name: yaml_bool\n    when: {utm_medium: no}\n    channel: other\n",
     "utm_medium: no", "rule 1 (yaml_bool): when.utm_medium: YAML read False"),
    ("  - name: internal_text\n    when: {referrer_internal: \"yes\"}\n    channel: other\n",
     "referrer_internal", "rule 1 (internal_text): when.referrer_internal: Input should be a valid boolean"),
    ("  - when: {utm_source: bing}\n    name: fine\n    channel: organic_search\n",  # at its own line
     "    name: fine", "rule 1 (fine): name: rule 0 has this name too (names are unique)"),
    ("  - name: Bad Name\n    when: {utm_source: bing}\n    channel: organic_search\n",
     "Bad Name", "rule 1 (Bad Name): name: String should match pattern"),
    ("  - name: nested_regex\n    when: {referrer_host: {any: [{in: engines}, {matches: \"[a-\"}]}}\n"
     "    channel: other\n",
     "[a-", "rule 1 (nested_regex): when.referrer_host.any.1.matches: invalid regular expression '[a-'"),
])
def test_a_bad_rule_is_refused_naming_its_line_rule_and_reason(rules, needle, says):
    text = _file(rules)
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    message = str(raised.value)
    assert f"channels.yaml:{_line_of(text, needle)}: {says}" in message, message


@pytest.mark.parametrize(("text", "says"), [
    ("", ":1: the channel rules file must be a mapping"),
    ("- a list\n", ":1: the channel rules file must be a mapping"),
    ('version: "1"\nrules: []\n', ":2: rules: List should have at least 1 item"),
    ('rules:\n' + GOOD_RULE, ":1: version: Field required"),
    ('version: 2026.12\nrules:\n' + GOOD_RULE, ":1: version: must be a string: quote it"),
    ('version: "1"\nlists:\n  Bad List: [a]\nrules:\n' + GOOD_RULE, ":3: lists.Bad List.[key]: String should match"),
    ('version: "1"\nrules:\n' + GOOD_RULE + "default: billboards\n", ":6: default: Input should be"),
    ('version: "1"\nversion: "2"\nrules:\n' + GOOD_RULE, ":2: invalid channel rules: duplicate key 'version'"),
    ('version: "1"\nrules:\n  - name: x\n   when: {}\n', ":4: invalid YAML"),
    ('version: "1"\nextra: 1\nrules:\n' + GOOD_RULE, ":2: extra: unknown field"),
])
def test_a_bad_file_is_refused_naming_its_line(text, says):
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    assert "channels.yaml" + says in str(raised.value), str(raised.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ChannelRulesError, match="cannot read the channel rules file"):
        load_channel_rules(tmp_path / "nope.yaml")


CASELESS = parse_channel_rules("""
version: "caseless-1"
lists:
  partners: [Acme]
rules:
  - name: exact_referrer
    when: {referrer: {equals: "https://Example.com/"}}
    channel: referral
  - name: partner_campaign
    when: {utm_campaign: {matches: "^Partner-"}}
    channel: partner
  - name: partner_source
    when: {utm_source: {in: partners}}
    channel: partner
  - name: google_click
    when: {click_id: {equals: GCLID}}
    channel: paid_search
  - name: webinar_form
    when: {form_type: {in: [Webinar]}}
    channel: webinar
default: other
""", "caseless.yaml")


@pytest.mark.parametrize(("lead", "channel"), [
    (dict(referrer="https://Example.com/"), "referral"),
    (dict(referrer="https://example.com/"), "referral"),
    (dict(referrer=" HTTPS://EXAMPLE.COM/ "), "referral"),
    (dict(utm_source="x", utm_campaign="Partner-Q4"), "partner"),
    (dict(utm_source="x", utm_campaign="partner-q4"), "partner"),
    (dict(utm_source="x", utm_campaign="PARTNER-Q4"), "partner"),
    (dict(utm_source="ACME"), "partner"),
    (dict(page_url="https://a.io/?gclid=1"), "paid_search"),  # the rule's GCLID, lower-cased
    (dict(page_url="https://a.io/?GCLID=1"), "other"),  # click ids are read as sent (below)
    (dict(form_type="WEBINAR"), "webinar"),
    (dict(referrer="https://example.org/"), "other"),
])
def test_every_field_is_compared_without_case(lead, channel):
    arguments = dict(utm_source=None, utm_medium=None, referrer=None) | lead
    assert CASELESS.classify(**arguments) == channel


def test_the_shipped_rules_read_click_ids_as_sent_as_the_derivation_they_reproduce():
    # ad platforms write their click ids in lower case; the derivation never read ?GCLID=1 as one
    assert RULES.classify(None, None, None, "https://www.leadstream.io/?gclid=1") == "paid_search"
    assert RULES.classify(None, None, None, "https://www.leadstream.io/?GCLID=1") == "direct"
    assert RULES.classify(None, None, None, "https://www.leadstream.io/?Li_Fat_Id=1") == "direct"


def test_a_file_that_is_not_utf8_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "channels.yaml"
    path.write_bytes(_file("").replace('"t-1"', '"caf\xe9-1"').encode("latin-1"))
    with pytest.raises(ChannelRulesError) as raised:
        load_channel_rules(path)
    assert str(raised.value) == (f"{path}:1: the channel rules file is not UTF-8 text (byte 0xe9 at column 14): "
                                 "save it as UTF-8")


ALIAS_BOMB = 'version: "1"\nlists:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n' + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)) + "rules:\n" + GOOD_RULE


@pytest.mark.parametrize(("text", "line"), [
    ('version: "1"\nlists: {a: &x [*x]}\nrules:\n' + GOOD_RULE, 2),  # refers to itself
    (ALIAS_BOMB, 3),  # 9 levels of 9 aliases: 9^9 values once expanded
    ('version: "1"\nlists:\n  a: &engines [google]\n  b: *engines\nrules:\n' + GOOD_RULE, 3),
    ('version: "1"\nlists:\n  a: [google]\nrules:\n' + GOOD_RULE + "default: *nowhere\n", 8),
])
def test_anchors_and_aliases_are_refused_at_once(text, line):
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    assert str(raised.value) == (f"channels.yaml:{line}: invalid channel rules: YAML anchors and aliases "
                                 "(&name, *name) are not supported: name a list under lists: and refer to it by "
                                 "its name"), str(raised.value)


def test_a_file_nested_too_deeply_is_refused():
    with pytest.raises(ChannelRulesError, match="channels.yaml: invalid channel rules: nested too deeply"):
        parse_channel_rules('version: "1"\nlists: ' + "[" * 3000 + "]" * 3000 + "\n", "channels.yaml")


def test_every_problem_is_listed_each_at_its_line():
    text = ('version: "1"\nrules:\n'
            "  - name: first\n    when: {utm_source: }\n    channel: other\n"
            "  - name: second\n    when: {utm_medium: 5}\n    channel: billboards\n"
            "  - name: first\n    when: {utm_source: {in: Engines}}\n    channel: other\n")
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    assert str(raised.value) == """channels.yaml:4: invalid channel rules (5 problem(s)):
  channels.yaml:4: rule 0 (first): when.utm_source: no condition given (YAML read nothing after utm_source:): \
write one, or remove the line
  channels.yaml:7: rule 1 (second): when.utm_medium: a condition on utm_medium must be a string or a mapping \
such as {equals: …} (got 5)
  channels.yaml:8: rule 1 (second): channel: Input should be 'organic_search', 'paid_search', 'organic_social', \
'paid_social', 'email', 'referral', 'direct', 'event', 'webinar', 'content', 'partner' or 'other' (got 'billboards')
  channels.yaml:9: rule 2 (first): name: rule 0 has this name too (names are unique)
  channels.yaml:10: rule 2 (first): when.utm_source.in: unknown list 'Engines' (lists: none)"""
    assert [line for line, _ in raised.value.problems] == [4, 7, 8, 9, 10]


@pytest.mark.parametrize(("rules", "needle", "says"), [
    ("  - name: r\n    when: {utm_source: {in: 5}}\n    channel: other\n", "in: 5",
     "rule 1 (r): when.utm_source.in: `in` takes a list of values or the name of a list under lists: (got 5)"),
    ("  - name: r\n    when: {utm_source: {domain_in: [a, 5]}}\n    channel: other\n", "domain_in",
     "rule 1 (r): when.utm_source.domain_in: `domain_in` takes a list of strings; item 1 is 5: quote it"),
    ("  - name: r\n    when: {utm_source: {label_in: {a: b}}}\n    channel: other\n", "label_in",
     "rule 1 (r): when.utm_source.label_in: `label_in` takes a list of values or the name of a list under lists: "
     "(got a mapping)"),
    ("  - name: r\n    when: {utm_medium: 5}\n    channel: other\n", "utm_medium: 5",
     "rule 1 (r): when.utm_medium: a condition on utm_medium must be a string or a mapping such as {equals: …} "
     "(got 5)"),
    ("  - name: r\n    when: {utm_medium: {any: [5]}}\n    channel: other\n", "any: [5]",
     "rule 1 (r): when.utm_medium.any.0: each matcher of `any` is a string or a mapping such as {equals: …} (got 5)"),
    ("  - name: r\n    when: {utm_medium: {any: 5}}\n    channel: other\n", "any: 5",
     "rule 1 (r): when.utm_medium.any: `any` takes a list of matchers (got 5)"),
    ("  - name: r\n    when: {utm_medium: {any: []}}\n    channel: other\n", "any: []",
     "rule 1 (r): when.utm_medium.any: `any` takes at least one matcher"),
    ("  - just a string\n", "just a string",
     "rule 1: a rule must be a mapping with name, when and channel (got 'just a string')"),
    ("  - name: r\n    when: google\n    channel: other\n", "when: google",
     "rule 1 (r): when: `when` must be a mapping of fields to conditions, such as {utm_source: google} "
     "(got 'google')"),
    ("  - name: r\n    when: {referrer_internal: , utm_source: a}\n    channel: other\n", "referrer_internal",
     "rule 1 (r): when.referrer_internal: no condition given (YAML read nothing after referrer_internal:)"),
])
def test_a_bad_rule_is_refused_in_the_files_words(rules, needle, says):
    text = _file(rules)
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    message = str(raised.value)
    assert f"channels.yaml:{_line_of(text, needle)}: {says}" in message, message
    assert "instance of" not in message and "constrained-str" not in message and "list[" not in message


@pytest.mark.parametrize(("text", "says"), [
    ('version: "  "\nrules:\n' + GOOD_RULE, ":1: version: must not be blank"),
    ('version: "\t"\nrules:\n' + GOOD_RULE, ":1: version: must not be blank"),
    ('version: "1"\nlists: 5\nrules:\n' + GOOD_RULE,
     ":2: lists: must be a mapping of list names to their values, such as {engines: [google, bing]} (got 5)"),
    ('version: "1"\nlists:\n  a: 5\nrules:\n' + GOOD_RULE,
     ":3: lists.a: must be a list of values, such as [google, bing] (got 5)"),
    ('version: "1"\nrules: 5\n', ":2: rules: must be a list of rules, each starting with `- name: …` (got 5)"),
])
def test_a_bad_file_is_refused_in_its_words(text, says):
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    assert "channels.yaml" + says in str(raised.value), str(raised.value)


def test_a_regular_expression_runs_in_linear_time():
    rules = parse_channel_rules(_file("  - name: nested\n    when: {utm_campaign: {matches: \"^(a+)+$\"}}\n"
                                      "    channel: partner\n"), "channels.yaml")
    started = time.perf_counter()
    # 200 characters, the most the API accepts: Python's backtracking engine took 0.34 s on 22
    assert rules.classify("x", None, None, utm_campaign="a" * 199 + "!") == "direct"
    assert rules.classify("x", None, None, utm_campaign="A" * 200) == "partner"
    assert time.perf_counter() - started < 0.05
    assert rules.classify("x", None, None, utm_campaign="a\ud800") == "direct"  # no UTF-8 for it: no error


@pytest.mark.parametrize("pattern", ["(?=paid)", "(cpc)\\\\1", "(?<!un)paid"])
def test_a_pattern_re2_cannot_run_is_refused_naming_its_rule(pattern):
    text = _file(f"  - name: lookaround\n    when: {{utm_medium: {{matches: \"{pattern}\"}}}}\n    channel: other\n")
    with pytest.raises(ChannelRulesError) as raised:
        parse_channel_rules(text, "channels.yaml")
    assert (f"channels.yaml:{_line_of(text, 'matches')}: rule 1 (lookaround): when.utm_medium.matches: invalid "
            "regular expression") in str(raised.value)
    assert "(the syntax is RE2's: no look-around or back-references)" in str(raised.value)
