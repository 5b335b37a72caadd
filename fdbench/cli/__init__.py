"""The ``fdbench`` command line: a click group whose commands live one per module in this package.

Commands are imported lazily, so ``fdbench --version`` and ``fdbench make-dataset`` do not pay for
importing the training or analysis engines.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import sys

import click

from fdbench import __version__
from fdbench.errors import FdbenchError

# command name -> (module, attribute). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fdbench.cli.demo", "demo"),
    "ablation": ("fdbench.cli.ablation", "ablation"),
    "pretrain": ("fdbench.cli.pretrain", "pretrain"),
    "eval-corruptions": ("fdbench.cli.evaluate", "eval_corruptions"),
    "eval-retrieval": ("fdbench.cli.retrieval", "eval_retrieval"),
    "eval-segmentation": ("fdbench.cli.segmentation", "eval_segmentation"),
    "ceiling": ("fdbench.cli.ceiling", "ceiling"),
    "frequency-analysis": ("fdbench.cli.frequency", "frequency_analysis"),
    "compare": ("fdbench.cli.compare", "compare"),
    "make-corruptions": ("fdbench.cli.corruptions", "make_corruptions"),
    "corruption-fidelity": ("fdbench.cli.corruptions", "corruption_fidelity"),
    "make-dataset": ("fdbench.cli.dataset", "make_dataset"),
    "export": ("fdbench.cli.export", "export"),
    "bench-train": ("fdbench.cli.bench", "bench_train"),
    "launch": ("fdbench.cli.launch", "launch"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not importlib.util.find_spec(COMMANDS[name][0]):
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        # keep our order (workflow order) instead of click's alphabetical one
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=150)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fdbench")
def cli():
    """fdbench: pretrain DINOv2 / FastDINOv2 on your data and measure how robust it is.

    \b
    Main story:  fdbench demo
    By hand:     fdbench pretrain --curriculum two-stage   (and --curriculum none)
                 fdbench eval-corruptions runs/<name>/final.pt
                 fdbench frequency-analysis
                 fdbench compare runs/*
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="fdbench", standalone_mode=False)
    except FdbenchError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C (click turns it into Abort)
        click.echo(interrupted_message(argv if argv is not None else sys.argv[1:]), err=True)
        sys.exit(130)
    except click.ClickException as err:
        message = err.format_message().replace("\n", " ")
        if isinstance(err, click.UsageError) and err.ctx is not None:
            message += f" (see '{err.ctx.command_path} --help')"
        click.echo(f"error: {message}", err=True)
        sys.exit(err.exit_code if err.exit_code else 2)
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        click.echo(f"error: {os_error_message(err)}", err=True)
        sys.exit(2)
    sys.exit(0)


# what an interrupted command leaves on disk (every file is written whole: a Ctrl-C or a kill never
# leaves a torn one) and what re-running the same command does with it
KEPT = {
    "pretrain": "the run's last checkpoint (checkpoints/last.pt: saved at every epoch end and every "
    "--save-every-minutes) and its metrics are kept; re-running the same command continues from it",
    "eval-corruptions": "every finished (checkpoint, corruption, severity) cell is kept in results.csv; "
    "re-running the same command computes only the missing ones",
    "eval-retrieval": "every finished (checkpoint, corruption, severity) cell is kept in results.csv; "
    "re-running the same command computes only the missing ones",
    "frequency-analysis": "every finished analysis is kept (and the heat map's progress in "
    "<checkpoint>/heatmap.partial.pt); re-running the same command reuses them",
    "make-corruptions": "every image written so far is kept; re-running the same command skips them",
    "make-dataset": "nothing was replaced (the new dataset is swapped in only when complete); "
    "re-run the same command to make it",
    "ceiling": "nothing is kept of the unfinished training; re-run the same command",
    "compare": "the earlier report, if any, is kept; re-run the same command",
    "demo": "finished steps are kept; re-running the same command resumes the demo",
}


def interrupted_message(argv: list[str]) -> str:
    command = next((a for a in argv if a in COMMANDS), None)
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"), None)
    kept = KEPT.get(command or "", "finished work is kept; re-run the same command to resume")
    return f"interrupted: {command or 'fdbench'}{f' on {out}' if out else ''} stopped; {kept}"


# file-system conditions a user fixes (free space, permissions), not bugs: one line, exit 2.
# Every write goes through fdbench.io's atomic writer, so files that existed before are intact.
_DISK_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.EFBIG,
}


def os_error_message(err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    hint = {
        errno.ENOSPC: "; free some space and re-run the same command to resume",
        errno.EDQUOT: "; free some space and re-run the same command to resume",
        errno.EROFS: "; choose a writable output folder",
        errno.EACCES: "; check the folder's permissions",
    }.get(err.errno, "")
    return f"{err.strerror or err}{where}{hint}"
