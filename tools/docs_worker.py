"""nbdev's notebook worker for the docs build, in a module of its own so that spawned worker processes can import it.

`tools/build_docs.py` hands `proc_one` to nbdev's `proc_nbs` in place of nbdev's worker: it adds fastcore's docments
parameter table to each `show_doc`, and records a failure beside the notebook's place in `_proc/` so that the
build can name every notebook that fails.
"""

from collections.abc import Callable
from pathlib import Path

import nbdev.serve_drv

NBDEV_WORKER = nbdev.serve_drv.main  # nbdev's own worker, which `proc_one` wraps


def with_docments_table(
    render: Callable,  # nbdev's `BasicMarkdownRenderer._repr_markdown_`
) -> Callable:  # The same, with the parameter table added after the signature and docstring
    "Add fastcore's docments table (parameter, type, default, details) to what `show_doc` writes for the docs."
    from fastcore.docments import DocmentTbl

    def _repr_markdown_(self) -> str:
        md = render(self)
        try:
            tbl = DocmentTbl(self.sym)._repr_markdown_()
        except Exception:  # noqa: BLE001: a symbol with no readable signature keeps nbdev's output
            tbl = ""
        return f"{md}\n\n{tbl}" if tbl else md

    _repr_markdown_.docments_table = True
    return _repr_markdown_


ERROR_SUFFIX = ".docs-error"  # beside the processed notebook in _proc/: why nbdev could not process it


def proc_one(
    o: tuple,  # (source, destination, processor), as nbdev's `proc_nbs` hands to each worker
) -> None:
    """Process one notebook with nbdev's worker (show_doc with parameter tables). A failure is written beside the
    destination instead of raised, so that one build names every notebook that fails, not only the first."""
    import nbdev.showdoc

    r = nbdev.showdoc.BasicMarkdownRenderer
    if not getattr(r._repr_markdown_, "docments_table", False):
        r._repr_markdown_ = with_docments_table(r._repr_markdown_)
    try:
        NBDEV_WORKER(o)
    except Exception as e:  # noqa: BLE001: the build reports it, naming the notebook
        dst = Path(o[1])
        dst.unlink(missing_ok=True)  # no stale page, and nbdev's cache processes it again next time
        dst.with_name(dst.name + ERROR_SUFFIX).write_text(f"{o[0]}: {type(e).__name__}: {e}", encoding="utf-8")
