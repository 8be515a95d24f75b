"""docs/architecture.md stays a true map: its paths exist, its hops name real code, no module is missing."""

import ast
import re
import tomllib
from functools import cache
from pathlib import Path

from schemas.topics import TOPICS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("agent", "controller", "schemas", "service_runtime", "simulator", "mcufleet")
"""The packages whose every module must have a line in the module map."""

TEST_DIRS = frozenset({"tests", "test", "__pycache__"})
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PY_REFERENCE = re.compile(
    r"^(?P<path>[\w.-]+(?:/[\w.-]+)+\.py)"  # a file below a directory: `agent/ota.py`
    r"(?::(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?))?$"  # optionally `:function` or `:Class.method`
)
PACKAGE_DIR = re.compile(r"^[a-z_]+(?:/[a-z_]+)*/$")
MAP_LINE = re.compile(r"^- `(?P<path>[\w./-]+\.py)`(?P<rest>.*)$")
OWNS = re.compile(r"^(?: \(\*\*pure\*\*\))?: \S.{9,}$")
"""What follows a map line's path: an optional pure mark, then what the module owns."""
TOPIC_ROOTS = ("gw/", "ctl/", "rollout/", "ops/")
PURE = "**pure**"


def code_spans(text: str) -> list[str]:
    """Every inline code span of the text, in order."""
    return CODE_SPAN.findall(text)


def section(text: str, heading: str) -> str:
    """The body of the level-2 section `heading`, up to the next level-2 heading."""
    text = "\n" + text
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def mapped_modules(text: str) -> list[str]:
    """The module paths the module map gives a line of their own, in order."""
    return [
        match["path"]
        for line in section(text, "Module map").splitlines()
        if (match := MAP_LINE.match(line)) is not None
    ]


def package_modules(root: Path = ROOT) -> set[str]:
    """Every module of the mapped packages except `__init__.py` and anything under a test directory."""
    found = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            relative = path.relative_to(root)
            if path.name == "__init__.py" or path.name.startswith("test_"):
                continue
            if TEST_DIRS.intersection(relative.parts[:-1]):
                continue
            found.add(relative.as_posix())
    return found


@cache
def defined_names(path: Path) -> frozenset[str]:
    """Top-level functions, classes and assigned names of a module, and `Class.method` for methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}.{member.name}")
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """Backticked `*.py` files and package directories the page names that do not exist."""
    problems = []
    for span in code_spans(text):
        reference = PY_REFERENCE.match(span)
        missing_file = reference is not None and not (root / reference["path"]).is_file()
        missing_dir = (
            PACKAGE_DIR.match(span) is not None
            and span.split("/")[0] in PACKAGES
            and not (root / span).is_dir()
        )
        if missing_file or missing_dir:
            problems.append(span)
    return problems


def broken_hops(text: str, root: Path = ROOT) -> list[str]:
    """`file.py:name` hops whose file exists but does not define that function, class or method."""
    problems = []
    for span in code_spans(text):
        reference = PY_REFERENCE.match(span)
        if reference is None or reference["name"] is None:
            continue
        path = root / reference["path"]
        if path.is_file() and reference["name"] not in defined_names(path):
            problems.append(span)
    return problems


def unmapped_modules(text: str, root: Path = ROOT) -> list[str]:
    """Modules of the packages without their line in the module map."""
    return sorted(package_modules(root) - set(mapped_modules(text)))


def unknown_topics(text: str) -> list[str]:
    """Backticked topics that are not a template of `schemas.topics.TOPICS`."""
    templates = {spec.template for spec in TOPICS}
    return [
        span
        for span in code_spans(text)
        if (span.startswith(TOPIC_ROOTS) or span == "audit") and span not in templates
    ]


def pure_core_paths(root: Path = ROOT) -> list[str]:
    """The paths of the modules and packages the import-linter contract on pure cores names."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (pure,) = [contract for contract in contracts if contract["name"].startswith("the pure cores")]
    paths = []
    for module in pure["source_modules"]:
        relative = module.replace(".", "/")
        paths.append(f"{relative}/" if (root / relative).is_dir() else f"{relative}.py")
    return paths


def wrongly_marked_pure(text: str, root: Path = ROOT) -> list[str]:
    """Pure cores not marked pure, and lines marking as pure a path the contract does not cover."""
    cores = pure_core_paths(root)
    marked = [line for line in text.splitlines() if PURE in line]
    problems = [core for core in cores if not any(f"`{core}`" in line for line in marked)]
    for line in marked:
        head = line.split(PURE)[0]
        paths = [span for span in code_spans(head) if span.endswith((".py", "/"))]
        problems.extend(path for path in paths if not any(path.startswith(core) for core in cores))
    return problems


def test_every_named_path_exists() -> None:
    """Every `*.py` file and package directory the page names in backticks exists."""
    assert missing_paths(DOC.read_text(encoding="utf-8")) == []


def test_every_hop_names_real_code() -> None:
    """Every `file.py:function` or `file.py:Class.method` hop names something that file defines."""
    assert broken_hops(DOC.read_text(encoding="utf-8")) == []


def test_every_module_is_on_the_map() -> None:
    """Every module of the six packages has its line in the module map, so a new module needs one."""
    assert unmapped_modules(DOC.read_text(encoding="utf-8")) == []


def test_the_map_lists_each_module_once_with_what_it_owns() -> None:
    """No module has two lines, and every line says what its module owns."""
    text = DOC.read_text(encoding="utf-8")
    listed = mapped_modules(text)
    assert sorted({path for path in listed if listed.count(path) > 1}) == []
    bare = [
        line
        for line in section(text, "Module map").splitlines()
        if (match := MAP_LINE.match(line)) is not None and OWNS.match(match["rest"]) is None
    ]
    assert bare == []


def test_every_named_topic_is_in_the_contract() -> None:
    """Every backticked topic on the page is a template of `schemas.topics.TOPICS`."""
    assert unknown_topics(DOC.read_text(encoding="utf-8")) == []


def test_pure_marks_follow_the_import_linter_contract() -> None:
    """The cores the import-linter contract keeps pure are marked pure, and nothing else is."""
    assert wrongly_marked_pure(DOC.read_text(encoding="utf-8")) == []


def test_the_checks_catch_a_wrong_map() -> None:
    """A renamed path, a missing function, a dropped module line and a bad topic are all reported."""
    text = DOC.read_text(encoding="utf-8")
    assert "`agent/link/image_upload.py:upload_image`" in text
    renamed = text.replace("`agent/link/image_upload.py`", "`agent/link/upload.py`")
    assert "agent/link/upload.py" in missing_paths(renamed)
    assert "agent/link/image_upload.py" in unmapped_modules(renamed)
    misnamed = text.replace("image_upload.py:upload_image`", "image_upload.py:upload_everything`")
    assert broken_hops(misnamed) == ["agent/link/image_upload.py:upload_everything"]
    dropped = "\n".join(line for line in text.splitlines() if not line.startswith("- `agent/jobs.py`"))
    assert unmapped_modules(dropped) == ["agent/jobs.py"]
    assert unknown_topics(text + "\n`gw/{gateway_id}/commands`\n") == ["gw/{gateway_id}/commands"]
    unmarked = text.replace("`agent/ota_decisions.py` (**pure**)", "`agent/ota_decisions.py`")
    assert wrongly_marked_pure(unmarked) == ["agent/ota_decisions.py"]


def test_a_new_module_needs_its_line(tmp_path: Path) -> None:
    """A module added to a package (outside its tests) is reported until the map lists it."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "agent" / "__init__.py").write_text("")
    (tmp_path / "agent" / "shiny.py").write_text('"""New."""\n')
    (tmp_path / "agent" / "tests").mkdir()
    (tmp_path / "agent" / "tests" / "probe.py").write_text("")
    assert unmapped_modules("## Module map\n\n- `agent/other.py`: x\n", tmp_path) == ["agent/shiny.py"]
    assert unmapped_modules("## Module map\n\n- `agent/shiny.py`: new things\n", tmp_path) == []
