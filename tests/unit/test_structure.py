"""The house rules, read from the source with ``ast`` (imports inside functions included).

- ``shared/`` (the spine) imports no service, not the composition root (``leadstream``) and
  not the pipeline store (``pipeline_store``); it names no service in its code either.
- ``pipeline_store/`` imports the spine only: services may import it, it imports no service.
- a service imports the spine, the pipeline store and itself; never another service, never
  the composition root.
- the spine's ``Settings`` holds what more than one process reads: no field is named after a
  service, and each is read by the spine, the composition root or two services at least. A
  setting one service alone reads is a field of that service's own class
  (``services/<name>/settings.py``, named in the registry).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from leadstream.registry import SERVICES
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_THE_SPINE = ("services", "leadstream", "pipeline_store")
# a string that reads as a module path outside the spine ("services.capture.app:create_app")
MODULE_PATH = re.compile(rf"({'|'.join(OUTSIDE_THE_SPINE)})([.:][\w.:]*)?")


def modules(directory: str) -> list[Path]:
    found = sorted((ROOT / directory).rglob("*.py"))
    assert found, f"no Python modules under {directory}/"
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of the file, at any depth."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            # "from services import capture" imports services.capture
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def test_imports_are_read_at_every_depth_and_relative_ones_resolved():
    """The parser the rules rely on sees what they are about (a rule over no import passes)."""
    probe = ROOT / "services" / "capture" / "probe.py"  # not on disk: its source is given
    source = (
        "import os\n"
        "def f():\n"
        "    from services.outreach import models\n"
        "    import leadstream.cli\n"
        "class C:\n"
        "    def g(self):\n"
        "        from .. import pipeline\n"
        "        from .forms import load_forms\n"
    )
    assert [name for _, name in imports(probe, source)] == [
        "os", "services.outreach.models", "leadstream.cli", "services.pipeline", "services.capture.forms.load_forms",
    ]


@pytest.mark.parametrize("path", modules("shared"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_spine_imports_no_service_nor_the_composition_root_nor_the_store(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in imports(path) if top(name) in OUTSIDE_THE_SPINE]
    assert not bad, "the spine knows no service; services know the spine:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", modules("shared"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_spine_names_no_service(path):
    """No module path outside the spine in a string (importlib, uvicorn factory paths), and
    no service's name as a value: which services exist is the registry's business."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_PATH.fullmatch(node.value) or node.value in SERVICES:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", modules("pipeline_store"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pipeline_store_imports_the_spine_only(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in imports(path)
           if top(name) in ("services", "leadstream")]
    assert not bad, "\n".join(bad)


SERVICE_PACKAGES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file())
SERVICE_MODULES = [(service, path) for service in SERVICE_PACKAGES for path in modules(f"services/{service}")]


def test_every_service_package_is_checked_and_registered():
    assert set(SERVICE_PACKAGES) == set(SERVICES), "a package under services/ is a service of the registry"


@pytest.mark.parametrize(("service", "path"), SERVICE_MODULES,
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_no_service_imports_another_service_or_the_composition_root(service, path):
    bad = []
    for line, name in imports(path):
        parts = name.split(".")
        if parts[0] == "leadstream" or (parts[0] == "services" and parts[1:2] != [service]):
            bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not bad, f"{service} may import shared/, pipeline_store/ and itself:\n" + "\n".join(bad)


# ---------------------------------------------------------------- the unit of work's staging

STAGING_MODULES = {"shared/db/staging.py", "shared/db/unit_of_work.py"}  # ``staging_of``, ``adopt``
LOGGERS = {"log", "logger", "logging", "structlog"}


def session_info_uses(source: str) -> list[int]:
    """Lines that read or write ``<something>.info`` (SQLAlchemy's ``session.info``); a
    logger's ``info`` (``log.info(...)``, ``(log.warning if ... else log.info)(...)``) left out."""
    def logger(node: ast.expr) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        return name in LOGGERS

    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr == "info" and not logger(node.value)]


@pytest.mark.parametrize("path", [p for d in ("shared", "pipeline_store", "services", "leadstream") for p in modules(d)
                                  if str(p.relative_to(ROOT)) not in STAGING_MODULES],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_a_unit_of_works_state_goes_through_its_typed_staging(path):
    """What a transaction keeps is ``staging_of(session)`` (``shared/db/staging.py``), e.g.
    ``.state(SomeClass)``: no string key in ``session.info``."""
    lines = session_info_uses(path.read_text())
    assert not lines, f"{path.relative_to(ROOT)}:{lines}: use shared.db.staging_of(session), not session.info"


def test_the_staging_rule_has_teeth():
    source = 'session.info["x"] = 1\nself.session.info.get("x")\nlog.info("a")\n(log.warning if a else log.info)("b")\n'
    assert session_info_uses(source) == [1, 2]


# ---------------------------------------------------------------- settings


def read_names(directory: str) -> set[str]:
    """Attribute names (``settings.capture_rate_limit``) and strings (``getattr(s, "gc_freeze")``)
    that the modules under ``directory`` use: what they may read of the settings."""
    found = set()
    for path in modules(directory):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def named_after_a_service(field: str) -> str | None:
    return next((s for s in SERVICES if field.startswith(f"{s}_")), None)


def read_by_one_service_at_most(fields) -> dict[str, list[str]]:  # noqa: ANN001
    """The fields neither the spine nor the composition root reads, with the services that do
    when there are fewer than two."""
    common = read_names("shared") | read_names("leadstream")
    readers = {service: read_names(f"services/{service}") for service in SERVICES}
    alone = {}
    for field in fields:
        users = [service for service, names in readers.items() if field in names]
        if field not in common and len(users) < 2:
            alone[field] = users
    return alone


@pytest.mark.parametrize("field", Settings.model_fields)
def test_no_setting_of_the_spine_is_named_after_a_service(field):
    """``capture_rate_limit`` is capture's: a field of ``CaptureSettings``, not of the spine's."""
    owner = named_after_a_service(field)
    assert owner is None, (f"shared/settings.py: {field} is named after the {owner} service; "
                           f"declare it in services/{owner}/settings.py")


def test_every_setting_of_the_spine_is_read_by_more_than_one_service():
    """A setting of the spine is read by the spine or the composition root, or by two services
    at least; one that a single service reads is that service's (``dashboard_session_hours``
    is the pipeline's, though no service is named in it)."""
    alone = read_by_one_service_at_most(Settings.model_fields)
    assert not alone, f"settings of the spine that one service alone (or none) reads: {alone}"


def test_the_settings_rules_have_teeth():
    assert named_after_a_service("capture_rate_limit") == "capture"
    assert named_after_a_service("webhooks_timeout_s") == "webhooks"
    assert named_after_a_service("kafka_partitions") is None
    assert read_by_one_service_at_most(["dashboard_session_hours", "kafka_consumer_group", "api_rate_limit"]) == {
        "dashboard_session_hours": ["pipeline"], "kafka_consumer_group": ["qualification"]}
