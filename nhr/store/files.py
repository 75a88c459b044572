"""Where a run folder's objects live: a local folder, or an object store by URL.

``open_files(where)`` takes a path (``results/run``, ``file:///abs/run``) or an object-store
URL (``s3://bucket/run``, ``gs://bucket/run``, any URI ``pyarrow.fs`` knows) and returns a
``Files``: whole-object writes and reads, existence, listing and deletion by paths relative
to the root ("rel", always with ``/``).

- ``LocalFiles`` writes through a temp file and a rename (``os.replace``), so a killed
  writer leaves the old object or the new one, never half of one, and lists with
  ``os.scandir`` (the engine's hot path on a local disk).
- ``ObjectFiles`` goes through ``pyarrow.fs`` (S3, GCS, HDFS, …), already a dependency and
  the filesystem layer parquet reads use. A write is one PUT of the whole object: atomic
  on an object store, where there is no rename and none is needed. The endpoint and
  options come from the URL's query (``?endpoint_override=…&scheme=http``, as
  ``pyarrow.fs.FileSystem.from_uri`` reads them) or, for ``s3://``, from the standard AWS
  environment (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, credentials by the AWS chain).

A ``Files`` pickles as its URL and the options resolved when it was opened (the endpoint
included, never a credential), so a stage sent to a worker on another node reopens the
same store there and takes its credentials from that node's environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nhr.errors import RunFolderError

# an entry of a listing: (name, stamp), the stamp changing whenever the object does
Listing = list[tuple[str, tuple[int, int]]]


def is_url(where: Path | str) -> bool:
    """Whether ``where`` names an object store (``scheme://…`` other than ``file://``)."""
    if isinstance(where, Path):
        return False
    scheme = urlsplit(str(where)).scheme
    return len(scheme) > 1 and scheme != "file" and "://" in str(where)


def location(where: Path | str) -> Path | str:
    """A run folder as given: a ``Path`` for a local folder (``file://`` URLs included),
    the URL string for an object store."""
    if isinstance(where, Path):
        return where
    text = str(where)
    if text.startswith("file://"):
        return Path(urlsplit(text).path)
    return text.rstrip("/") if is_url(text) else Path(text)


def join(where: Path | str, rel: str) -> Path | str:
    """``where / rel`` for a path or a URL (the query of a URL kept at its end)."""
    where = location(where)
    if isinstance(where, Path):
        return where / rel
    parts = urlsplit(where)
    path = parts.path.rstrip("/") + "/" + rel.strip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{path}{query}"


class Files:
    """Whole objects under one root, by relative path (see the module docstring)."""

    url: str
    local: bool

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        """Write the object ``rel`` whole (atomically: old or new, never half)."""
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of ``rel``; ``FileNotFoundError`` when it does not exist."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        """Whether the object (or folder) ``rel`` exists."""
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        """Delete the object ``rel`` (nothing when it does not exist)."""
        raise NotImplementedError

    def listdir(self, rel: str) -> Listing:
        """The objects directly in the folder ``rel`` (empty when it does not exist)."""
        raise NotImplementedError

    def walk(self, rel: str) -> list[str]:
        """Every object under the folder ``rel``, as paths relative to the root."""
        raise NotImplementedError

    def arrow(self, rel: str) -> tuple[str, Any]:
        """(path, filesystem) of ``rel`` for pyarrow readers (``filesystem=None`` locally)."""
        raise NotImplementedError

    def local_path(self, rel: str = "") -> Path | None:
        """The local path of ``rel``, or None on an object store."""
        return None

    def describe(self, rel: str = "") -> str:
        """``rel`` as a user would name it (a path or a URL), for messages."""
        return str(join(self.url, rel)) if rel else self.url

    def child(self, rel: str) -> Files:
        """The same store rooted at the folder ``rel``."""
        raise NotImplementedError


class LocalFiles(Files):
    """A local (or shared, mounted) folder."""

    local = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalFiles, (self.root,))

    def path(self, rel: str) -> Path:
        """The file of ``rel``."""
        return self.root / rel if rel else self.root

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def listdir(self, rel: str) -> Listing:
        folder = self.path(rel)
        if not folder.is_dir():
            return []
        out = []
        with os.scandir(folder) as it:
            for item in it:
                if item.is_file():
                    st = item.stat()
                    out.append((item.name, (st.st_mtime_ns, st.st_size)))
        return out

    def walk(self, rel: str) -> list[str]:
        folder = self.path(rel)
        if not folder.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)).replace(os.sep, "/")
            for p in folder.rglob("*")
            if p.is_file()
        )

    def arrow(self, rel: str) -> tuple[str, Any]:
        return str(self.path(rel)), None

    def local_path(self, rel: str = "") -> Path | None:
        return self.path(rel)

    def describe(self, rel: str = "") -> str:
        return str(self.path(rel))

    def child(self, rel: str) -> Files:
        return LocalFiles(self.path(rel))


def _s3_options(url: str) -> dict[str, Any]:
    """Options of an ``s3://`` URL from the AWS environment (endpoint and region), for
    ``pyarrow.fs.S3FileSystem``; the URL's own query overrides them."""
    # an object is written with one PUT when the stream is closed, not a request to open
    # it first: half the round trips per write (errors still surface, at close)
    options: dict[str, Any] = {"allow_delayed_open": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        options["scheme"] = parts.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return options


def _filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """(pyarrow filesystem, root path inside it) of an object-store URL."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    parts = urlsplit(url)
    try:
        if parts.scheme in ("s3", "s3a") and not parts.query:
            return pafs.S3FileSystem(**options), (parts.netloc + parts.path).rstrip("/")
        fs, path = pafs.FileSystem.from_uri(url)
        return fs, path.rstrip("/")
    except (OSError, ValueError, TypeError, pa.ArrowException) as err:
        raise RunFolderError(
            f"cannot open the run folder {url} ({type(err).__name__}: {err})",
            "check the URL, the endpoint (AWS_ENDPOINT_URL, or ?endpoint_override=… in the "
            "URL) and the credentials in the environment",
        ) from None


class ObjectFiles(Files):
    """An object-store prefix (or any ``pyarrow.fs`` filesystem) named by a URL."""

    local = False

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        scheme = urlsplit(self.url).scheme
        if options is None:
            options = _s3_options(self.url) if scheme in ("s3", "s3a") else {}
        self.options = dict(options)
        self.fs, self.base = _filesystem(self.url, self.options)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectFiles, (self.url, self.options))

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel.strip('/')}" if rel else self.base

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        # one write of the whole buffer, then close: the object appears only when the
        # upload completes, so a killed writer leaves no partial object
        with self.fs.open_output_stream(self._key(rel)) as out:
            out.write(data)

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._key(rel)) as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as err:
            if "not found" in str(err).lower() or "NoSuchKey" in str(err):
                raise FileNotFoundError(self.describe(rel)) from None
            raise

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._key(rel)).type != pafs.FileType.NotFound

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self._key(rel))
        except FileNotFoundError:
            pass

    def _infos(self, rel: str, recursive: bool) -> Iterator[Any]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._key(rel), allow_not_found=True, recursive=recursive)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                yield info

    def listdir(self, rel: str) -> Listing:
        return [(i.base_name, (i.mtime_ns or 0, i.size or 0)) for i in self._infos(rel, False)]

    def walk(self, rel: str) -> list[str]:
        cut = len(self.base) + 1
        return sorted(i.path[cut:] for i in self._infos(rel, True))

    def arrow(self, rel: str) -> tuple[str, Any]:
        return self._key(rel), self.fs

    def child(self, rel: str) -> Files:
        return ObjectFiles(str(join(self.url, rel)), self.options)


def open_files(where: Path | str | Files) -> Files:
    """The ``Files`` of a run folder given as a path or URL (a ``Files`` as is)."""
    if isinstance(where, Files):
        return where
    where = location(where)
    if isinstance(where, Path):
        return LocalFiles(where)
    return ObjectFiles(where)
