import ast
from pathlib import Path

import fedmedlora.federation.methods as methods

MODULES = sorted(Path(methods.__file__).parent.glob("*.py"))


def test_methods_import_no_flower():
    """The methods are pure tensor functions: the strategy imports them, never the reverse."""
    assert {"base", "fedmedlora", "ffa", "robust", "screening", "dp"} <= {p.stem for p in MODULES}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root != "flwr", f"{path.name} imports {name}"
                assert not name.startswith("fedmedlora.federation.") or name.startswith(
                    ("fedmedlora.federation.aggregation", "fedmedlora.federation.methods")
                ), f"{path.name} imports {name}"
