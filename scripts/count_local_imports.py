"""Count imports of the project's own modules made inside functions (issue #31, item 3).

An import inside a function hides a dependency from import-linter and from a reader; the rule
is "at the top, unless a measured start-up cost or a true optional dependency needs it there",
and each such place carries a comment saying which. This lists them:

    python scripts/count_local_imports.py            # the count, one line per file
    python scripts/count_local_imports.py --list     # every place, file:line module
    python scripts/count_local_imports.py --max 40   # exit 1 above 40, or on a place without its reason

Imports under `if TYPE_CHECKING:` are not runtime imports and are not counted; neither are
third-party ones (pulumi_aws, vllm, ray, torch stay lazy where they are, for start-up time).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("infra", "ray_cluster", "policy")


@dataclass(frozen=True)
class LocalImport:
    path: str
    line: int
    module: str


def _module_of(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return [*parts, "__init__"]
    return parts


def _target(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    """The absolute module names an import statement loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        return [node.module or ""]
    base = package[: len(package) - node.level + 1]  # level 1 is the package itself
    return [".".join([*base, *(node.module.split(".") if node.module else [])])]


def local_imports(path: Path) -> list[LocalImport]:
    """Imports of the project's own modules inside a function body of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_of(path)[:-1]
    found: list[LocalImport] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True)
            elif in_function and isinstance(child, ast.Import | ast.ImportFrom):
                for name in _target(child, package):
                    if name.split(".")[0] in PACKAGES:
                        found.append(LocalImport(str(path.relative_to(ROOT)), child.lineno, name))
            else:
                visit(child, in_function)

    visit(tree, False)
    return found


# Each place says why it is inside: on the import's line or in the comment lines right above it.
REASONS = ("start-up:", "optional dependency:")


def reason(imp: LocalImport) -> str | None:
    """The `# start-up: ...` / `# optional dependency: ...` comment that explains one place."""
    lines = (ROOT / imp.path).read_text(encoding="utf-8").splitlines()
    i = imp.line - 1
    candidates = [lines[i]]
    while i > 0 and lines[i - 1].strip().startswith("#"):
        i -= 1
        candidates.append(lines[i])
    for text in candidates:
        _, hash_, comment = text.partition("#")
        if hash_ and any(comment.strip().startswith(r) for r in REASONS):
            return comment.strip()
    return None


def all_local_imports(root: Path = ROOT) -> list[LocalImport]:
    out: list[LocalImport] = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out.extend(local_imports(path))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="every place, file:line module")
    parser.add_argument("--max", type=int, default=None, help="exit 1 when the count is above this")
    args = parser.parse_args(argv)
    found = all_local_imports()
    if args.list:
        for imp in found:
            print(f"{imp.path}:{imp.line} {imp.module}")
    else:
        for path, n in Counter(imp.path for imp in found).most_common():
            print(f"{n:4d} {path}")
    print(f"{len(found)} function-level imports of the project's own modules")
    if args.max is not None:
        bad = [imp for imp in found if reason(imp) is None]
        for imp in bad:
            print(
                f"{imp.path}:{imp.line}: {imp.module}: no `# start-up:` / `# optional dependency:` reason",
                file=sys.stderr,
            )
        if len(found) > args.max:
            print(f"above the limit of {args.max}", file=sys.stderr)
        return 1 if bad or len(found) > args.max else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
