"""Where rlpt keeps and finds files: its cache folder (`$RLPT_CACHE_DIR`, default `~/.cache/rlpt`: built-in models,
converted GGUF files, tokenised corpora), folders written whole or not at all, and the files of installed packages."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("RLPT_CACHE_DIR", Path.home() / ".cache" / "rlpt")).expanduser()


def package_folder(package: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_abandoned_builds(folder: Path) -> None:
    """The temporary folders of builds of `folder` whose process is gone (killed mid-build: `finally` never ran)."""
    for tmp in folder.parent.glob(f".{glob.escape(folder.name)}-pid*-*"):
        pid = tmp.name.removeprefix(f".{folder.name}-pid").split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only set it, and a thread
    writing files in between would get them world-writable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def usual_permissions(folder: Path) -> None:
    """Give `folder` and everything in it the permissions a new file or folder gets under the user's umask: a
    temporary folder is made 0700, and safetensors writes its weights 0600, so a model folder written through one
    was unreadable to the user's group."""
    umask = current_umask()
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def build_folder(folder: Path, build, marker: str = "config.json") -> Path:
    """A folder written whole or not at all: `build(tmp)` writes into a temporary sibling, which is renamed to
    `folder` when complete. A folder that already holds `marker` (a model's config.json) is kept as it is."""
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-pid{os.getpid()}-", dir=folder.parent))
    try:
        build(tmp)
        usual_permissions(tmp)
        os.replace(tmp, folder)  # also replaces an empty folder
    except OSError:
        if not (folder / marker).is_file():  # a concurrent build may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
