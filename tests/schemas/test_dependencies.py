"""`schemas` imports only msgspec and the standard library (stronger than the import-linter list)."""

import ast
import sys
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schemas_import_only_msgspec_and_the_standard_library() -> None:
    """Every import in schemas/ is msgspec, the standard library, or schemas itself."""
    allowed = set(sys.stdlib_module_names) | {"msgspec", "schemas"}
    for path in SCHEMAS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
