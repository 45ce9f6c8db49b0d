"""The user docs hold together: every relative link in README.md and docs/ resolves (file and heading), and the
configuration reference names exactly the spec's keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from mmmo.spec.schema import SearchSpec

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REFERENCE = ROOT / "docs" / "configuration.md"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: " + ", ".join(broken)


def schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key a spec may hold, dotted (`merge.method`), by the name a user writes (aliases included)."""
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.add(key)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys |= schema_keys(sub, key + ".")
    return keys


def reference_keys() -> set[str]:
    """The keys in the first column of the reference's table; `evaluation.workers`, `ray_address` names both
    `evaluation.workers` and `evaluation.ray_address`."""
    keys = set()
    for line in REFERENCE.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", line.split("|")[1])
        prefix = ""
        for n in names:
            n = n.split(":")[0].strip()
            if "." in n:
                prefix = n.rsplit(".", 1)[0] + "."
                keys.add(n)
            else:
                keys.add(prefix + n)
    return keys


def test_reference_names_exactly_the_spec_keys() -> None:
    documented, schema = reference_keys(), schema_keys(SearchSpec)
    assert not documented - schema, f"in the reference but not the schema: {sorted(documented - schema)}"
    # A key is covered when it or a key above it (`optimizer.weak_to_strong` for its fields) is in the table.
    sections = {k.rsplit(".", 1)[0] for k in schema if "." in k}  # `merge` itself is only a heading
    missing = [k for k in schema - sections if not any(k == d or k.startswith(d + ".") for d in documented)]
    assert not missing, f"spec keys missing from docs/configuration.md: {sorted(missing)}"
