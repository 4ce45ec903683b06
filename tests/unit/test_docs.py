"""The documentation's links lead somewhere: every relative link in README.md and docs/*.md
names a file inside the repository (and, for a Markdown file, a heading that exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto: …


def links(text: str) -> list[str]:
    """Link targets of Markdown text, outside code blocks and inline code."""
    return LINK.findall(INLINE_CODE.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = FENCE.sub("", document.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def broken(document: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(document.read_text()):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document):
    assert not broken(document), f"{document.relative_to(ROOT)}: {broken(document)}"


def test_the_documents_are_there_and_link_each_other():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/architecture.md", "docs/operations.md", "docs/performance.md"} <= names
    readme = {target.partition("#")[0] for target in links((ROOT / "README.md").read_text())}
    assert {"docs/architecture.md", "docs/operations.md", "docs/performance.md"} <= readme


def repository(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """A repository of its own: a README at its root holding ``text``, and docs/operations.md."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "operations.md").write_text("# Operations\n\n## Configuration\n")
    (root / "README.md").write_text(f"# A document\n\n{text}\n")
    return root, root / "README.md"


@pytest.mark.parametrize(("text", "problem"), [
    ("[the spec](../shared/spec/PRODUCT.md)", "outside the repository"),
    ("[gone](docs/nothing-here.md)", "no such file"),
    ("[ops](docs/operations.md#no-such-heading)", "no heading #no-such-heading"),
    ("![picture](docs/missing.png)", "no such file"),
    ("[self](#nowhere)", "no heading #nowhere"),
])
def test_the_check_finds_broken_links(tmp_path, text, problem):
    root, readme = repository(tmp_path, text)
    found = broken(readme, root)
    assert len(found) == 1 and problem in found[0], found


@pytest.mark.parametrize("text", [
    "[site](https://example.com/x)", "<http://127.0.0.1:8004/dashboard>", "`[not](a-link.md)`",
    "```\n[not](a-link.md)\n```", "[here](#a-document)", "[ops](docs/operations.md#configuration)",
    "[folder](docs)",
])
def test_the_check_leaves_good_and_external_links_alone(tmp_path, text):
    root, readme = repository(tmp_path, text)
    assert broken(readme, root) == []


def test_slugs_follow_github():
    assert slug("Tests against external Kafka and PostgreSQL") == "tests-against-external-kafka-and-postgresql"
    assert slug("The `leadstream` command") == "the-leadstream-command"
    assert slug("Sizing (from `make bench` on 2 cores, SQLite)") == "sizing-from-make-bench-on-2-cores-sqlite"


def test_the_configuration_table_names_no_setting_that_does_not_exist():
    """The other direction of test_spine's check: a row left behind by a removed setting fails."""
    from leadstream.registry import DATABASES, SERVICES, setting_names

    operations = (ROOT / "docs" / "operations.md").read_text()
    start = operations.index("## Configuration")
    named = set(re.findall(r"`LEADSTREAM_([A-Z0-9_]+)`", operations[start:operations.index("\n## ", start)]))
    known = {name.upper() for name in setting_names()}  # the spine's and every service's
    known |= {f"{name.upper()}_PORT" for name in SERVICES} | {f"{name.upper()}_DATABASE_URL" for name in DATABASES}
    assert named - known == set()
