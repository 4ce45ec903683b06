"""Channel rules: the inbound channel of a lead, from a versioned file operators edit
(``deploy/config/channels.yaml``), validated into frozen pydantic models and compiled once.

A lead is read into **fields** (``lead_fields``), each compared without case:

- ``utm_source``, ``utm_medium``, ``utm_campaign``: the UTM parameters sent, else those in the
  landing page's query string; trimmed and lower-cased, ``""`` when absent.
- ``click_id``: the names of the landing page's query parameters (``gclid``, ``msclkid`` …)
  as sent: the one field read with its case, as the derivation the shipped file reproduces
  always read it (ad platforms write their click ids in lower case; ``?GCLID=1`` is no
  Google click). A rule's names are lower-cased like every value, so write them so.
- ``referrer``: the referrer as sent, trimmed and lower-cased; ``""`` when absent or when it is
  a URL naming no host (a referrer that cannot be read as a URL is kept: it is some other site).
- ``referrer_host``, ``referrer_scheme``: the referrer URL's host and scheme, lower-cased
  (``android-app://com.google.android.gm`` has scheme ``android-app``, host the app's package).
- ``referrer_internal``: ``true`` when the referrer's registrable domain is the landing page's
  (a hop within the site).
- ``form_type``: the form's type (``demo_request``, ``webinar`` …).

**Rules** are tried in order and the first whose conditions all hold names the channel;
none holding, ``default`` does. A condition is a field and a matcher:

- a string: the field equals it; ``true``/``false`` for ``referrer_internal``;
- ``{equals: S}``; ``{in: LIST}``: the field is one of a named list or of an inline list;
- ``{matches: REGEX}``: a regular expression (RE2's syntax, matched in linear time) found
  anywhere in the field (anchor it with ``^`` and ``$``), without case;
- ``{domain_in: LIST}``: the field, read as a host, has its registrable domain in the list
  (``m.facebook.com`` → ``facebook.com``);
- ``{label_in: LIST}``: the field, read as a host, has the label before its public suffix in
  the list (``www.google.co.uk`` → ``google``);
- ``{present: true|false}``: the field is (not) empty;
- ``{any: [matcher, …]}``: one of them holds.

For ``click_id`` (a set of names) a matcher holds when it holds for one of the names.
Without case means: every field but ``click_id`` is lower-cased, and so is every value a rule
compares it with (``equals``, ``in`` and the named lists); a regular expression is matched
ignoring case.
A file that does not load is a ``ChannelRulesError`` naming the file, the line, the rule
(index and name) and the reason: an unknown field, list or channel, a rule with no
condition, an invalid regular expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit

import re2
from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, ValidationError, ValidationInfo,
    field_validator, model_validator,
)

from services.qualification.domain import yaml_config
from services.qualification.domain.identity import registrable_domain

INBOUND_CHANNELS = (
    "organic_search", "paid_search", "organic_social", "paid_social", "email", "referral",
    "direct", "event", "webinar", "content", "partner", "other",
)
Channel = Literal[
    "organic_search", "paid_search", "organic_social", "paid_social", "email", "referral",
    "direct", "event", "webinar", "content", "partner", "other",
]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_\-]+$")]
TEXT_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "click_id", "referrer", "referrer_host",
               "referrer_scheme", "form_type")
OPERATORS = ("equals", "in", "matches", "domain_in", "label_in", "present", "any")


class ChannelRulesError(ValueError):
    """A channel rules file that cannot be used; ``problems`` lists ``(line, message)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[int | None, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


# RE2 matches in time linear in the field's length: a pattern like ^(a+)+$ cannot stall a
# worker as Python's backtracking engine would (0.34 s on 22 characters). Without case: the
# fields are lower-cased, and a pattern written with capitals ("^Partner-") must still match.
_REGEX_OPTIONS = re2.Options()
_REGEX_OPTIONS.case_sensitive = False
_REGEX_OPTIONS.log_errors = False  # the reason is in the loader's message, not on stderr


def _regex(pattern: str) -> Callable[[str], bool]:
    """The test of ``pattern`` (RE2's syntax, without case): whether a value holds a match;
    ``ValueError`` with the reason if RE2 cannot compile it."""
    try:
        search = re2.compile(pattern, options=_REGEX_OPTIONS).search
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"{reason} (the syntax is RE2's: no look-around or back-references)") from None
    except UnicodeEncodeError:
        raise ValueError("it is not valid Unicode text") from None

    def found(value: str) -> bool:
        try:
            return search(value) is not None
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8: matched as a replacement character
            return search(value.encode("utf-8", "replace").decode("utf-8")) is not None

    return found


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _lowered(values: Any) -> Any:
    return [v.strip().lower() for v in values] if isinstance(values, list) and all(
        isinstance(v, str) for v in values) else values


ListRef = Annotated[Name | list[StrictStr], BeforeValidator(_lowered)]


class Matcher(_Strict):
    """One test of a field's value; exactly one operator."""

    equals: StrictStr | None = None
    in_: ListRef | None = Field(None, alias="in")
    matches: StrictStr | None = None
    domain_in: ListRef | None = None
    label_in: ListRef | None = None
    present: StrictBool | None = None
    any: Annotated[list[Matcher], Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"equals": value}
        if isinstance(value, bool):
            raise ValueError(f"YAML read {value!r}: quote a string (\"yes\", \"no\"), or use {{present: …}}")
        return value

    @field_validator("equals")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.strip().lower()

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _regex(value)
            except ValueError as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @field_validator("in_", "domain_in", "label_in")
    @classmethod
    def _known_list(cls, value: Any, info: ValidationInfo) -> Any:
        lists = (info.context or {}).get("lists")
        if isinstance(value, str) and lists is not None and value not in lists:
            known = ", ".join(sorted(lists)) or "none"
            raise ValueError(f"unknown list {value!r} (lists: {known})")
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> Matcher:
        given = [name for name in OPERATORS if getattr(self, "in_" if name == "in" else name) is not None]
        if len(given) != 1:
            raise ValueError(f"a matcher has exactly one of {', '.join(OPERATORS)} (got {', '.join(given) or 'none'})")
        return self


class When(_Strict):
    """The conditions of a rule, all of which must hold."""

    @field_validator("*", mode="before")
    @classmethod
    def _given(cls, value: Any, info: ValidationInfo) -> Any:
        # `utm_source:` with nothing after it is YAML's null: the condition would silently vanish
        if value is None:
            raise ValueError(f"no condition given (YAML read nothing after {info.field_name}:): "
                             "write one, or remove the line")
        return value

    utm_source: Matcher | None = None
    utm_medium: Matcher | None = None
    utm_campaign: Matcher | None = None
    click_id: Matcher | None = None
    referrer: Matcher | None = None
    referrer_host: Matcher | None = None
    referrer_scheme: Matcher | None = None
    referrer_internal: StrictBool | None = None
    form_type: Matcher | None = None


class Rule(_Strict):
    name: Name
    when: When
    channel: Channel

    @model_validator(mode="after")
    def _has_a_condition(self) -> Rule:
        if not self.when.model_dump(exclude_none=True):
            raise ValueError("a rule needs at least one condition under when")
        return self


class ChannelRuleSet(_Strict):
    """One version of the channel rules: named lists, ordered rules, the default channel.
    Rules' names are unique: ``parse_channel_rules`` checks it on the file's data, so that a
    repeated name is listed with the other problems, at its own line."""

    version: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    lists: dict[Name, list[StrictStr]] = {}
    rules: Annotated[list[Rule], Field(min_length=1)]
    default: Channel = "direct"

    @field_validator("version")
    @classmethod
    def _not_blank(cls, version: str) -> str:
        if not version.strip():
            raise ValueError("must not be blank: it names the rules on every touch they classify")
        return version

    @field_validator("lists")
    @classmethod
    def _lower_lists(cls, lists: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: [v.strip().lower() for v in values] for name, values in lists.items()}



# ---- a lead's fields ---------------------------------------------------------------------


class LeadFields(NamedTuple):
    """What the rules read of a lead (see the module docstring). A named tuple: one is built
    per lead on qualification's path, and a tuple is the cheapest to build."""

    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    click_id: frozenset[str] = frozenset()
    referrer: str = ""
    referrer_host: str = ""
    referrer_scheme: str = ""
    referrer_internal: bool = False
    form_type: str = ""


def _clean(value: str | None) -> str:
    return (value or "").strip().lower()


def _query(url: str | None) -> dict[str, list[str]]:
    if not url:
        return {}
    try:
        return parse_qs(urlsplit(url).query)
    except ValueError:
        return {}


def lead_fields(utm_source: str | None, utm_medium: str | None, referrer: str | None, page_url: str | None = None,
                form_type: str | None = None, utm_campaign: str | None = None) -> LeadFields:
    """The fields of a lead as the rules read them."""
    query = _query(page_url)
    source, medium, campaign = _clean(utm_source), _clean(utm_medium), _clean(utm_campaign)
    if query:
        source = source or _clean((query.get("utm_source") or [""])[0])
        medium = medium or _clean((query.get("utm_medium") or [""])[0])
        campaign = campaign or _clean((query.get("utm_campaign") or [""])[0])
    text = (referrer or "").strip()
    host = scheme = ""
    internal = False
    if text:
        try:
            parts = urlsplit(text if "://" in text else f"//{text}")
            host, scheme = (parts.hostname or "").lower(), parts.scheme
        except ValueError:
            pass  # not a URL: some other site all the same
        else:
            if not host:
                text = ""  # a URL naming no host says nothing
            elif page_url:
                site = registrable_domain(host)
                internal = site is not None and site == registrable_domain(page_url)
    names = frozenset(query) if query else _NO_NAMES  # as sent: see click_id above
    return LeadFields(source, medium, campaign, names, text.lower(), host, scheme, internal, _clean(form_type))


_NO_NAMES: frozenset[str] = frozenset()


# ---- compiled rules ----------------------------------------------------------------------

Test = Callable[[str], bool]


def _host_label(host: str) -> str | None:
    """``www.google.co.uk`` → ``google``: the label before the public suffix."""
    if "." not in host:
        return None
    registrable = registrable_domain(host)
    return registrable.split(".", 1)[0] if registrable else None


def _resolved(matcher: Matcher, lists: dict[str, frozenset[str]]) -> Matcher:
    """The matcher with its named lists replaced by their values."""
    changes: dict[str, Any] = {}
    for name in ("in_", "domain_in", "label_in"):
        ref = getattr(matcher, name)
        if isinstance(ref, str):
            changes[name] = sorted(lists[ref])
    if matcher.any is not None:
        changes["any"] = [_resolved(m, lists) for m in matcher.any]
    return matcher.model_copy(update=changes) if changes else matcher


def _compile_matcher(matcher: Matcher, lists: dict[str, frozenset[str]]) -> Test:
    def members(ref: str | list[str]) -> frozenset[str]:
        return lists[ref] if isinstance(ref, str) else frozenset(ref)

    if matcher.equals is not None:
        expected = matcher.equals
        return lambda value: value == expected
    if matcher.in_ is not None:
        return members(matcher.in_).__contains__
    if matcher.matches is not None:
        return _regex(matcher.matches)
    if matcher.domain_in is not None:
        domains = members(matcher.domain_in)
        return lambda value: "." in value and registrable_domain(value) in domains
    if matcher.label_in is not None:
        labels = members(matcher.label_in)
        return lambda value: _host_label(value) in labels
    if matcher.present is not None:
        wanted = matcher.present
        return lambda value: bool(value) is wanted
    tests = [_compile_matcher(m, lists) for m in matcher.any or ()]
    return lambda value: any(test(value) for test in tests)


def _on_names(matcher: Matcher, test: Test) -> Callable[[frozenset[str]], bool]:
    # click_id is a set of names: present means any name; other tests hold for one of them
    if matcher.present is not None:
        wanted = matcher.present
        return lambda names: bool(names) is wanted
    return lambda names: any(test(name) for name in names)


def _needs_a_value(matcher: Matcher) -> bool:
    """Whether the matcher can only hold for a non-empty field (so a rule with it is
    skipped at once for a lead without that field)."""
    if matcher.equals is not None:
        return matcher.equals != ""
    if matcher.in_ is not None:
        return isinstance(matcher.in_, list) and "" not in matcher.in_
    if matcher.matches is not None:
        return not _regex(matcher.matches)("")
    if matcher.domain_in is not None or matcher.label_in is not None:
        return True
    if matcher.present is not None:
        return matcher.present
    return all(_needs_a_value(m) for m in matcher.any or ())


def _holds(conditions: list[tuple[str, Callable[[Any], bool]]]) -> Callable[[LeadFields], bool]:
    """One function testing every condition of a rule, in order (no generator per lead)."""
    getters = [(attrgetter(name), test) for name, test in conditions]
    if len(getters) == 1:
        (get, test), = getters
        return lambda fields: test(get(fields))
    if len(getters) == 2:
        (get1, test1), (get2, test2) = getters
        return lambda fields: test1(get1(fields)) and test2(get2(fields))
    return lambda fields: all(test(get(fields)) for get, test in getters)


@dataclass(frozen=True)
class _CompiledRule:
    name: str
    channel: str
    holds: Callable[[LeadFields], bool]
    needs: frozenset[str]  # fields that must not be empty for the rule to hold


class ChannelRules:
    """A loaded rule set, compiled: ``classify`` gives a lead's channel (and ``version``)."""

    def __init__(self, rule_set: ChannelRuleSet, source: str = "") -> None:
        self.rule_set, self.source = rule_set, source
        self.version = rule_set.version
        lists = {name: frozenset(values) for name, values in rule_set.lists.items()}
        compiled = []
        for rule in rule_set.rules:
            conditions: list[tuple[str, Callable[[Any], bool]]] = []
            needs = set()
            for name in TEXT_FIELDS:
                matcher = getattr(rule.when, name)
                if matcher is not None:
                    # named lists are resolved here: a list is all it can be once loaded
                    resolved = _resolved(matcher, lists)
                    test = _compile_matcher(resolved, lists)
                    conditions.append((name, _on_names(resolved, test) if name == "click_id" else test))
                    if _needs_a_value(resolved):
                        needs.add(name)
            if rule.when.referrer_internal is not None:
                wanted = rule.when.referrer_internal
                conditions.append(("referrer_internal", lambda value, wanted=wanted: value is wanted))
            compiled.append(_CompiledRule(rule.name, rule.channel, _holds(conditions), frozenset(needs)))
        self._rules = tuple(compiled)
        self.default = rule_set.default
        # the rules that may hold for a lead, by which fields it has (most leads have few):
        # the rules needing a field it lacks are never tried
        self._candidates: dict[tuple[bool, ...], tuple[_CompiledRule, ...]] = {}

    def _rules_for(self, fields: LeadFields) -> tuple[_CompiledRule, ...]:
        key = tuple(bool(getattr(fields, name)) for name in TEXT_FIELDS)
        found = self._candidates.get(key)
        if found is None:
            present = {name for name, has in zip(TEXT_FIELDS, key) if has}
            found = self._candidates[key] = tuple(rule for rule in self._rules if rule.needs <= present)
        return found

    def rule_for(self, fields: LeadFields) -> str | None:
        """The name of the first rule that holds (``None``: the default channel)."""
        return next((rule.name for rule in self._rules_for(fields) if rule.holds(fields)), None)

    def channel_of(self, fields: LeadFields) -> str:
        for rule in self._rules_for(fields):
            if rule.holds(fields):
                return rule.channel
        return self.default

    def classify(self, utm_source: str | None, utm_medium: str | None, referrer: str | None,
                 page_url: str | None = None, form_type: str | None = None, utm_campaign: str | None = None) -> str:
        """The inbound channel of a lead; always one of ``INBOUND_CHANNELS``."""
        return self.channel_of(lead_fields(utm_source, utm_medium, referrer, page_url, form_type, utm_campaign))

    def classify_lead(self, data: dict[str, Any]) -> str:
        """The channel of a lead from its event data as stored (``touches.data``)."""
        utm = data.get("utm") or {}
        return self.classify(utm.get("source"), utm.get("medium"), data.get("referrer"), data.get("page_url"),
                             data.get("form_type"), utm.get("campaign"))


# ---- loading -----------------------------------------------------------------------------


def load_channel_rules(path: str | Path) -> ChannelRules:
    """The rules in the YAML file at ``path``; ``ChannelRulesError`` naming the line otherwise."""
    path = Path(path)
    text = yaml_config.read_text(path, ChannelRulesError, what="channel rules")
    return parse_channel_rules(text, str(path))


def parse_channel_rules(text: str, name: str = "<channels>") -> ChannelRules:
    """The rules in YAML ``text`` (``name`` is used in error messages)."""
    root, data = yaml_config.read_mapping(text, name, ChannelRulesError, what="channel rules",
                                          shape="version, lists and rules",
                                          reuse="name a list under lists: and refer to it by its name")
    lists = data.get("lists")
    known = set(lists) if isinstance(lists, dict) else set()
    found: list[tuple[tuple[Any, ...], str]] = _checks_of_the_file(data)
    rule_set = None
    try:
        rule_set = ChannelRuleSet.model_validate(data, context={"lists": known})
    except ValidationError as exc:
        for error in exc.errors():
            loc, reason = _plain(error, data, known)
            found.append((loc, f"{_where(data, loc)}: {reason}" if reason else
                          yaml_config.describe(error, _where(data, loc))))
    if rule_set is not None and not found:
        return ChannelRules(rule_set, name)
    problems: list[tuple[int | None, str]] = []
    for loc, message in found:
        problem = (yaml_config.line_of(root, loc), message)
        if problem not in problems:  # a union's branches, a check made twice: said once
            problems.append(problem)
    problems.sort(key=lambda p: p[0] or 0)
    lines = "\n".join(f"  {name}:{line}: {message}" for line, message in problems)
    raise ChannelRulesError(f"{name}:{problems[0][0]}: invalid channel rules ({len(problems)} problem(s)):\n{lines}",
                            problems)


def _checks_of_the_file(data: dict) -> list[tuple[tuple[Any, ...], str]]:
    """What the models cannot say with the other problems (a validator of the rule set runs
    only once every rule is valid): each rule whose name an earlier rule has, at its name."""
    rules = data.get("rules")
    found: list[tuple[tuple[Any, ...], str]] = []
    first: dict[str, int] = {}
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            loc = ("rules", index, "name")
            found.append((loc, f"{_where(data, loc)}: rule {first[name]} has this name too (names are unique)"))
        else:
            first[name] = index
    return found


_LIST_OPERATORS = ("in", "domain_in", "label_in")


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _plain(error: dict[str, Any], data: dict, lists: set[str]) -> tuple[tuple[Any, ...], str | None]:
    """The location an operator reads (without pydantic's union branches) and, for the
    errors whose own message names pydantic's types, the reason in the file's words
    (``None``: the error's message says it well enough)."""
    loc, kind = tuple(error["loc"]), error["type"]
    for index, part in enumerate(loc[:-1]):
        if part in _LIST_OPERATORS and index >= 3 and loc[index - 1] != "lists":
            # `in: Name | list[str]`: one error per branch of the union, about one value
            loc = loc[:index + 1]
            return loc, _list_operand(part, _value_at(data, loc), lists)
    got = _shown(error.get("input"))
    where = loc[-1] if loc else None
    if kind == "model_type":
        model = (error.get("ctx") or {}).get("class_name")
        if model == "Matcher" and len(loc) >= 2 and loc[-2] == "any":
            return loc, f"each matcher of `any` is a string or a mapping such as {{equals: …}} (got {got})"
        if model == "Matcher":
            return loc, f"a condition on {where} must be a string or a mapping such as {{equals: …}} (got {got})"
        if model == "When":
            return loc, f"`when` must be a mapping of fields to conditions, such as {{utm_source: google}} (got {got})"
        if model == "Rule":
            return loc, f"a rule must be a mapping with name, when and channel (got {got})"
    if kind == "list_type":
        if loc == ("rules",):
            return loc, f"must be a list of rules, each starting with `- name: …` (got {got})"
        if len(loc) == 2 and loc[0] == "lists":
            return loc, f"must be a list of values, such as [google, bing] (got {got})"
        if where == "any":
            return loc, f"`any` takes a list of matchers (got {got})"
    if kind == "dict_type" and loc == ("lists",):
        return loc, f"must be a mapping of list names to their values, such as {{engines: [google, bing]}} (got {got})"
    if kind == "too_short" and where == "any":
        return loc, "`any` takes at least one matcher"
    if kind == "string_type" and isinstance(error.get("input"), dict | list):
        return loc, f"must be a string (got {got})"
    return loc, None


def _list_operand(operator: str, value: Any, lists: set[str]) -> str:
    if isinstance(value, str):
        return f"unknown list {value!r} (lists: {', '.join(sorted(lists)) or 'none'})"
    if isinstance(value, list):
        bad = next(((i, v) for i, v in enumerate(value) if not isinstance(v, str)), None)
        if bad is not None:
            quote = ": quote it" if isinstance(bad[1], bool | int | float) else ""
            return f"`{operator}` takes a list of strings; item {bad[0]} is {_shown(bad[1])}{quote}"
    return f"`{operator}` takes a list of values or the name of a list under lists: (got {_shown(value)})"


def _where(data: dict, loc: tuple[Any, ...]) -> str:
    """``rule 3 (paid_medium): when.utm_medium.matches`` for a rule's error, else the path."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules")
        rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        name = rule.get("name") if isinstance(rule, dict) else None
        label = f"rule {loc[1]}" + (f" ({name})" if isinstance(name, str) else "")
        rest = [str(p) for p in loc[2:] if not str(p).startswith("function-")]
        return label + (": " + ".".join(rest) if rest else "")
    return yaml_config.dotted(loc)
