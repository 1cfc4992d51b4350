"""nbdev's notebook worker for the docs build, in a module of its own so that spawned worker processes can import it.

`tools/build_docs.py` hands `proc_one` to nbdev's `proc_nbs` in place of nbdev's worker. It changes three things:

- each `show_doc` also gets fastcore's docments parameter table (parameter, type, default, details);
- nbdev runs every cell that contains an import, so a cell that mixes imports with other code (against the house
  style) would run that code for the docs, and fail when it needs names from cells the docs do not run. Here such a
  cell runs only its top-level imports, and keeps its committed outputs; the docs never execute a notebook's
  lessons, only its import, export and `show_doc` cells. Each such cell is named once, so it can be split;
- a failure is written beside the notebook's place in `_proc/` instead of stopping the pool, so that the build
  names every notebook that fails, not only the first.
"""

import ast
import warnings
from collections.abc import Callable
from pathlib import Path

import nbdev.processors
import nbdev.serve_drv
from fastcore.basics import str2bool

NBDEV_WORKER = nbdev.serve_drv.main  # nbdev's own worker, which `proc_one` wraps
ERROR_SUFFIX = ".docs-error"  # beside the processed notebook in _proc/: why nbdev could not process it
RUN_WHOLE = {"export", "exports", "exporti", "exec_doc"}  # directives whose cells nbdev runs whole, as it should


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


def imports_only(
    cell: object,  # A notebook cell, as nbdev's processors see it
) -> str | None:  # Its top-level imports alone, when it mixes them with other code; None for any other cell
    "Find a cell that nbdev would run only because it imports something, and give just its imports."
    if cell.cell_type != "code" or cell.directives_.keys() & RUN_WHOLE:
        return None
    trees = cell.parsed_() or []
    if nbdev.processors._show_docs(trees):
        return None
    imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
    if len(imports) == len(trees):
        return None  # an import cell, which runs whole
    return "\n".join(ast.unparse(t) for t in imports)


def exec_docs_cell(self, cell) -> None:
    "nbdev's `exec_show_docs.__call__`, except that a cell mixing imports with other code runs only its imports."
    if not self.nb.has_docs_ or not hasattr(self, "k"):
        return
    if str2bool(getattr(self.nb, "frontmatter_", {}).get("skip_showdoc", False)):
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found cells containing imports")
        run = nbdev.processors._do_eval(cell)
    if not run:
        return
    only = imports_only(cell)
    if only is None:
        self.k.cell(cell)
    elif only:  # (a cell whose imports are all inside functions runs not at all: it defines nothing the docs use)
        print(f"build_docs: {Path(self.nb.path_).name} cell {cell.idx_} mixes imports with other code: only its imports "
              "ran for the docs (house style: imports in a cell of their own)", flush=True)
        self.k.run_cell(only)
    if e := self.k.exc:
        raise Exception(f"Error in notebook {self.nb.path_}, cell {cell.idx_}:\n{cell.source}\n{type(e).__name__}: {e}") from e


def proc_one(
    o: tuple,  # (source, destination, processor), as nbdev's `proc_nbs` hands to each worker
) -> None:
    "Process one notebook for the docs with nbdev's worker, changed as the module says."
    import nbdev.showdoc

    r = nbdev.showdoc.BasicMarkdownRenderer
    if not getattr(r._repr_markdown_, "docments_table", False):
        r._repr_markdown_ = with_docments_table(r._repr_markdown_)
    nbdev.processors.exec_show_docs.__call__ = exec_docs_cell
    try:
        NBDEV_WORKER(o)
    except Exception as e:  # noqa: BLE001: the build reports it, naming the notebook
        dst = Path(o[1])
        dst.unlink(missing_ok=True)  # no stale page, and nbdev's cache processes it again next time
        dst.with_name(dst.name + ERROR_SUFFIX).write_text(f"{o[0]}: {type(e).__name__}: {e}", encoding="utf-8")
