"""File helpers: every output is written to a temp file beside it, then renamed into place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

import psutil

from .errors import UserError

_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions.
_UMASK = _umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


# Temp entries are named .<name>.<owner>.<random>.tmp (folders being swapped out: .old), the
# owner being the writing process (its pid and start time), so the next write of <name> can
# tell one whose process is gone (SIGKILL, power loss) from one still running, even where a
# new process has the old one's pid.
def _owner() -> str:
    return f"{os.getpid()}-{_start_time(os.getpid())}"


def _start_time(pid: int) -> int:
    """When process `pid` started, in clock ticks since boot (Linux's /proc/PID/stat): a
    step of the wall clock (NTP, a resumed VM) moves psutil's create_time, not this."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22, counted from the state, field 3
    except (OSError, IndexError, ValueError):
        return round(psutil.Process(pid).create_time() * 100)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_owner()}."


_OWNER = r"(\d+(?:-\d+)?)"
_ASIDE = re.compile(rf"\.(.+)\.{_OWNER}\.[^.]+\.aside")
_NOTHING = ".nothing"  # in a set-aside folder: there was no old folder to set aside


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp entries an earlier write of `path` left when its process was killed
    outright; a temp of a process that is still running is left alone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_OWNER}\.[^.]+\.(tmp|old)")
    removed = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else ():
        match = pattern.fullmatch(entry.name)
        if not match or _is_running(match.group(1)):
            continue
        _remove_entry(entry)
        removed.append(entry)
    return removed


_STALE = re.compile(rf"\.(.+)\.{_OWNER}\.[^.]+\.(tmp|old)")


def _remove_entry(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _is_running(owner: str) -> bool:
    """Whether the process that owns a temp (`pid-starttime`, or a bare pid as earlier
    versions wrote) is alive; a zombie (killed, not yet reaped) is not, nor a process that
    started later under the same pid."""
    pid, _, started = owner.partition("-")
    try:
        process = psutil.Process(int(pid))
        return process.status() != psutil.STATUS_ZOMBIE and (
            not started or _start_time(int(pid)) == int(started))
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: leave its files alone
        return True


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block's renames are all done: a commit or a swap
    is never cut between two renames by the stage's own stop (a SIGKILL still can, which
    recover_outputs repairs). Outside the main thread, signals go to the main thread anyway."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WriteFailed(UserError):
    """An output could not be written (disk full, no permission, ...)."""

    def __init__(self, path: Path, err: OSError):
        cause = err.strerror or str(err)
        super().__init__(f"could not write {path}: {cause}; the outputs are left as they were")


# While a `together` block runs: the (temp, final) pairs whose rename waits for its end, and
# the set-aside folders (set_aside) to remove once the new outputs are in place.
_pending: list[tuple[str, Path]] | None = None
_discards: list[Path] | None = None


@contextlib.contextmanager
def together() -> Iterator[None]:
    """The outputs written inside the block (through atomic_open, and the folders set_aside
    lets be filled in place) replace their old versions all at its end, or none of them do:
    a stage's outputs are all new or all old.

    The end is a commit through a journal (_commit): killed at any moment, even between two
    renames, the process leaves the old set or a commit the next command finishes
    (recover_outputs), never a mix."""
    global _pending, _discards
    outer = _pending, _discards
    _pending, _discards = [], []
    pending, discards = _pending, _discards
    try:
        yield
        with _signals_held():
            _commit(pending, discards)
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        _pending, _discards = outer


# A commit's journal: .outputs.<pid>.<random>.commit in the folder holding all its outputs,
# naming each temp, its path and the old file's backup, and the set-aside folders to remove.
_JOURNAL = re.compile(rf"\.outputs\.{_OWNER}\.[^.]+\.(commit|tmp)")


def _commit(pending: list[tuple[str, Path]], discards: list[Path]) -> None:
    """Rename each temp onto its path, then remove the old files and set-aside folders.

    The journal is in place before the first rename and removed after the last removal: a
    kill in between leaves it for recover_outputs to finish the commit. A rename that fails
    here (a full disk, a read-only folder) puts back the files already replaced, so that
    none of them is new."""
    if not pending and not discards:
        return
    entries = [(Path(tmp), path,
                path.with_name(f"{_temp_prefix(path)}{os.urandom(4).hex()}.old")
                if path.exists() else None) for tmp, path in pending]
    journal = _write_journal(entries, discards)
    done: list[tuple[Path, Path | None]] = []
    try:
        for tmp, path, backup in entries:
            if backup is not None:
                os.replace(path, backup)
            done.append((path, backup))
            os.replace(tmp, path)
    except OSError as err:
        for replaced, backup in reversed(done):
            if backup is not None:
                os.replace(backup, replaced)
            else:
                replaced.unlink(missing_ok=True)
        journal.unlink()
        raise WriteFailed(path, err) from None
    _finish(Path("."), entries, discards)  # the paths as given: absolute or from here
    journal.unlink()


def _write_journal(entries: list[tuple[Path, Path, Path | None]], discards: list[Path]) -> Path:
    """The journal, written and synced under a temp name, then renamed: it is whole or
    absent. Paths in it are relative to its folder, which holds every one of them."""
    paths = [path for _, path, _ in entries] + discards
    base = Path(os.path.commonpath([os.path.abspath(p.parent) for p in paths]))
    rel = lambda p: None if p is None else os.path.relpath(os.path.abspath(p), base)  # noqa: E731
    # each file as it stands now (the old one, or none) and as the commit makes it (the temp):
    # recover_outputs finishes the commit only while the files are one or the other
    record = {"replace": [[rel(tmp), rel(path), rel(backup), _identity(path), _identity(tmp)]
                          for tmp, path, backup in entries],
              "discard": [rel(d) for d in discards]}
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=f".outputs.{_owner()}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        journal = Path(tmp).with_suffix(".commit")
        os.replace(tmp, journal)
    except OSError as err:
        raise WriteFailed(paths[0], err) from None
    return journal


def _identity(path: Path) -> list[int] | None:
    """What tells a file from a later one at the same path: its inode, size and mtime."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


def _finish(base: Path, entries: list[tuple[Path, Path, Path | None]],
            discards: list[Path]) -> None:
    """What follows the renames: the old files' backups and the set-aside folders go."""
    for _, _, backup in entries:
        if backup is not None:
            _remove_entry(base / backup)  # a file, or a folder that stood at the output's path
    for folder in discards:
        shutil.rmtree(base / folder, ignore_errors=True)


def recover_outputs(root: str | os.PathLike = ".") -> list[str]:
    """Finish or undo what killed processes left in the project at `root`, before any command
    reads or writes its outputs: a commit whose journal is in place is finished (its outputs
    all new); a folder set aside for a fit that never committed is put back (its outputs all
    old). Returns one line per repair. A running process's entries are left alone."""
    root = Path(root)
    try:
        return _recover(root)
    except (OSError, ValueError, KeyError, TypeError) as err:
        cause = getattr(err, "strerror", None) or str(err)
        where = getattr(err, "filename", None) or root.resolve()
        raise UserError(f"could not repair what a stopped run left at {where}: {cause}; "
                        f"remove it by hand") from None


def _finish_or_drop(root: Path, record: dict) -> str:
    """A killed commit finished, if its files are still each the old one (or none) or the
    new one; dropped if another run has written them since (`dvc repro` restoring them from
    its cache, say), whose files then stay."""
    entries = [(Path(tmp), Path(path), backup and Path(backup), old, new)
               for tmp, path, backup, old, new in record["replace"]]
    current = all(_identity(root / path) in ((None, old) if (root / tmp).exists() else (new,))
                  for tmp, path, _, old, new in entries)
    paths = ", ".join(str(path) for _, path, _, _, _ in entries)
    if not current:
        for tmp, _, backup, _, _ in entries:
            for leftover in (tmp, backup):
                if leftover is not None:
                    _remove_entry(root / leftover)
        for folder in record["discard"]:
            shutil.rmtree(root / folder, ignore_errors=True)
        return (f"dropped the commit of {paths} that a stopped process left half done: those "
                f"files were written again since")
    for tmp, path, _, _, _ in entries:
        if (root / tmp).exists():
            os.replace(root / tmp, root / path)
    _finish(root, [(tmp, path, backup) for tmp, path, backup, _, _ in entries],
            [Path(d) for d in record["discard"]])
    return f"finished the commit of {paths} that a stopped process left half done"


def _recover(root: Path) -> list[str]:
    repaired = []
    for journal in sorted(root.glob(".outputs.*")):
        match = _JOURNAL.fullmatch(journal.name)
        if not match or _is_running(match.group(1)):
            continue
        if match.group(2) == "commit":
            repaired.append(_finish_or_drop(root, json.loads(journal.read_text())))
        journal.unlink(missing_ok=True)
    # the project's folders (not .git, .dvc, .venv nor a temp folder, whose names start
    # with a dot), the root first: removing a stale temp folder there removes what was in it
    folders = [root, *sorted(d for d in root.iterdir() if not d.name.startswith(".")
                             and d.is_dir() and not d.is_symlink())]
    for folder in folders:
        if not folder.is_dir():
            continue
        for aside in sorted(folder.glob(".*.aside")):
            match = _ASIDE.fullmatch(aside.name)
            if not match or _is_running(match.group(2)):
                continue
            path = folder / match.group(1)
            # the old folder inside: put it back; the note that there was none: remove what
            # the run left; empty: killed before the move, the folder is untouched
            if (aside / path.name).exists() or (aside / _NOTHING).exists():
                shutil.rmtree(path, ignore_errors=True)
            if (aside / path.name).exists():
                os.replace(aside / path.name, path)
            shutil.rmtree(aside)
            repaired.append(f"put back {path.relative_to(root)} as it was before a run that "
                            f"was stopped")
        for entry in sorted(folder.iterdir()):  # temps and backups no journal names
            match = _STALE.fullmatch(entry.name)
            if not match or _is_running(match.group(2)):
                continue
            swapped = entry / match.group(1)  # a folder swap (atomic_dir) killed midway
            if match.group(3) == "old" and swapped.exists() \
                    and not (folder / match.group(1)).exists():
                os.replace(swapped, folder / match.group(1))
                repaired.append(f"put back {(folder / match.group(1)).relative_to(root)} as "
                                f"it was before a run that was stopped")
            _remove_entry(entry)
    return repaired


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file in `path`'s folder; rename it to `path` only if the block succeeds
    (inside `together`, when that block does).

    A crash or an exception mid-write leaves the old file (or nothing) at `path`, never
    a partial one, and the temp file is removed. A failed write (disk full, no permission)
    is a WriteFailed naming the path and the cause.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if _pending is not None:
            _pending.append((tmp, path))
        else:
            os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise WriteFailed(path, err) from None
        raise


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a regular file (or a link to one); a missing one is FileNotFoundError,
    and a folder, FIFO, socket or device a UserError: reading a FIFO would wait forever."""
    path = Path(path)
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder, not {what}")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise UserError(f"{path}: is {kind}, not {what}")
    return path


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """The bytes of a text file the pipeline reads (YAML, JSON, TSV) as UTF-8; a stray byte
    (a file saved in Latin-1, a binary file under the name) is a UserError naming where."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text: byte 0x{data[err.start]:02x} on line "
                        f"{line} (save it as UTF-8)") from None


# The largest text file the pipeline reads (params.yaml, dvc.lock, metrics, manifests) is
# about 50 kB; anything past this is not one of them, and is not read into memory.
MAX_TEXT_BYTES = 16 * 1024 * 1024


def read_text(path: str | os.PathLike) -> str:
    """A text file as UTF-8 (decode_text's error for anything else). A folder, FIFO or device
    at `path`, or a file over MAX_TEXT_BYTES, is a UserError naming it, before a byte is read
    (a FIFO would wait for ever, /dev/zero fill the memory); FileNotFoundError and the other
    OSErrors pass on for the caller to name."""
    path = regular_file(path, "a text file")
    with open(path, "rb") as handle:
        data = handle.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise UserError(f"{path}: over {MAX_TEXT_BYTES // 2**20} MiB, not a file this pipeline "
                        f"writes or reads")
    return decode_text(data, path)


def parse_json(text: str, path: str | os.PathLike, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{what} at {path} is not valid JSON ({err})") from None
    except RecursionError:
        raise UserError(f"{what} at {path} nests too deep to be read (it is not a file this "
                        f"pipeline writes)") from None


def read_json(path: str | os.PathLike, what: str):
    """Read a JSON file another stage wrote; a missing or broken one is a UserError."""
    path = Path(path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise UserError(f"{what} not found at {path}; run the stage that writes it first "
                        "(`dvc repro`)") from None
    return parse_json(text, path, what)


def parse_yaml(text: str, what: str):
    """Parse YAML exactly as DVC does (ruamel.yaml's safe loader: YAML 1.2, duplicate keys
    rejected), so a value here is the value `dvc params diff` and `dvc exp show` print:
    `010` is 10, `1e-3` a float, `yes` a string."""
    from ruamel.yaml import YAML, YAMLError

    try:
        value = YAML(typ="safe").load(text)
    except YAMLError as err:
        raise UserError(f"{what} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise UserError(f"{what}: nests too deep to be read (the pipeline's params are two "
                        f"levels deep)") from None
    if _expands_past(value, MAX_YAML_VALUES):
        raise UserError(f"{what}: its YAML aliases (*name) expand to over "
                        f"{MAX_YAML_VALUES:,} values (an alias bomb would take for ever to "
                        f"check); write the values out")
    return value


# Values a YAML file may hold once its aliases are expanded: params.yaml has about 60 and
# dvc.lock about 700; a few lines of nested aliases can stand for trillions.
MAX_YAML_VALUES = 100_000


def _expands_past(value, limit: int) -> bool:
    """Whether `value`, each alias counted every time it is used, holds over `limit` values
    (stops counting there)."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _yaml_problem(err) -> str:
    """ruamel's message in one line: the problem and where (its full text ends in a link)."""
    problem = getattr(err, "problem", None) or str(err).split("\n")[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{problem}{where}"


def read_yaml(path: str | os.PathLike, what: str):
    """Read a YAML file (params.yaml, dvc.lock); a missing or broken one is a UserError."""
    path = Path(path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise UserError(f"{what} not found at {path}") from None
    return parse_yaml(text, str(path))


def fingerprint(data: bytes | Iterable[bytes]) -> str:
    """A short content digest (16 hex digits of sha256, over the parts in order if given
    parts): what outputs record of their inputs."""
    digest = hashlib.sha256()
    for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        digest.update(part)
    return digest.hexdigest()[:16]


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """md5 and sha256 of a file in one pass."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temp folder beside `path`; swap it in for `path` only if the block succeeds.

    A failed stage leaves the previous folder (or none) at `path`, never half of a new one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
        tmp.chmod(_DIR_MODE)
    except OSError as err:
        raise WriteFailed(path, err) from None
    try:
        yield tmp
        with _signals_held():
            _swap_in(tmp, path)
    except WriteFailed as err:  # named by the folder the reader knows, not by the temp
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(str(err).replace(str(tmp), str(path))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder `tmp` at `path`; if that fails, the previous folder stays there."""
    old = None
    try:
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path),
                                        suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except OSError as err:
        if old is not None and (old / path.name).exists():
            os.replace(old / path.name, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # no empty temp folder left either
        raise WriteFailed(path, err) from None
    if old is not None:
        shutil.rmtree(old)


@contextlib.contextmanager
def set_aside(path: str | os.PathLike) -> Iterator[Path]:
    """For a folder that a writer fills where it stands (DVCLive's log, which `dvc plots`
    and VS Code follow as it grows): the old folder is moved aside while the block runs
    (into .<name>.<pid>.<random>.aside, empty when there was none), put back if the block
    fails or is stopped, or by recover_outputs if the process is killed, and removed once it
    succeeds (inside `together`, with the block's commit)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        backup = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path),
                                       suffix=".aside"))
        if path.exists():
            os.replace(path, backup / path.name)
        else:  # said, so that recover_outputs removes what the block leaves at `path`
            (backup / _NOTHING).touch()
    except OSError as err:
        raise WriteFailed(path, err) from None
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        if (backup / path.name).exists():
            os.replace(backup / path.name, path)
        shutil.rmtree(backup)
        raise
    if _discards is not None:
        _discards.append(backup)
    else:
        shutil.rmtree(backup, ignore_errors=True)
