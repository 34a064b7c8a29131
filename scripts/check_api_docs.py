"""Check that the built site's API reference documents every public name of padnet and shows no raw Sphinx
role (":class:`X`" as text: docstrings cross-reference in Markdown, "[`X`][padnet.module.X]").

Public names: a package's ``__all__`` (checked where each name is defined), and every top-level class,
function and constant of a module whose name does not start with an underscore. Run after
``mkdocs build --strict``; exits 1 naming what is missing.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil
import re
import sys

import padnet

SITE = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "site")


def defined_names(module) -> list[str]:
    """Public top-level definitions of ``module``'s source (not its imports)."""
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_") and n != "TYPE_CHECKING"]


def expected() -> set[str]:
    """Qualified names that must be rendered: each public definition, and each name of an ``__all__`` where it
    is defined."""
    modules = [padnet] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(padnet.__path__, "padnet.")
        if m.name != "padnet.__main__"
    ]
    defined = {(module.__name__, name) for module in modules for name in defined_names(module)}
    names = {f"{module}.{name}" for module, name in defined}
    for module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            homes = [f"{m}.{n}" for m, n in defined if n == name and getattr(sys.modules[m], n) is obj]
            names.add(homes[0] if homes else f"{module.__name__}.{name}")
    return names


def rendered() -> set[str]:
    ids = set()
    for page in SITE.rglob("*.html"):
        ids.update(re.findall(r'id="(padnet\.[\w.]+)"', page.read_text(encoding="utf-8")))
    return ids


RAW_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc|ref|py:\w+):(?:`|<code>)")


def raw_roles() -> list[str]:
    """``page: excerpt`` for each raw Sphinx role in the built HTML."""
    found = []
    for page in sorted(SITE.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        found += [
            f"{page.relative_to(SITE)}: {text[m.start() : m.start() + 60]}" for m in RAW_ROLE.finditer(text)
        ]
    return found


def main() -> int:
    if not SITE.is_dir():
        print(f"check_api_docs: no site at {SITE}; run 'mkdocs build --strict' first", file=sys.stderr)
        return 1
    names = expected()
    missing = sorted(names - rendered())
    if missing:
        print(f"check_api_docs: {len(missing)} public names are not in the API reference:", file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
        return 1
    roles = raw_roles()
    if roles:
        print(f"check_api_docs: {len(roles)} raw Sphinx roles in the built site:", file=sys.stderr)
        for role in roles:
            print(f"  {role}", file=sys.stderr)
        return 1
    print(
        f"check_api_docs: every public name of padnet is in the API reference ({len(names)} names), no raw role"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
