"""How a benchmark leaves its results: the JSON first (so that a figure in the docs can always be traced to the
file the run wrote), then its markdown table, printed and written; each file replaced atomically."""
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lksmn_arch.utils.atomic import replace_atomically  # noqa: E402


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` (its folder created if missing), complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda temp: temp.write_text(text), durable=False)


def save_report(results: Dict[str, Any], json_path: Optional[Path], table: Optional[str] = None,
                markdown_path: Optional[Path] = None) -> None:
    """Write ``results`` as JSON to ``json_path``, then print ``table`` (or, without one, the JSON) and write it
    to ``markdown_path``; a path left None is not written."""
    text = json.dumps(results, indent=1) + '\n'
    if json_path:
        write_text(json_path, text)
    print(table if table is not None else text, flush=True)
    if table is not None and markdown_path:
        write_text(markdown_path, table)
