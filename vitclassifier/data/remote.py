"""Shards in an object store or on a web server (``s3://``, ``gs://``, ``az://``, ``https://``), read
through fsspec (s3fs, gcsfs, adlfs: optional packages), and ``pipe:`` commands (webdataset's).

Credentials and endpoints come from each store's own environment and files (for S3 botocore's chain:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws/``); nothing here
takes or keeps them, and every message names the URL redacted (urls.redact). A shard is read as one
stream; a transient error (a dropped connection, a 5xx, a timeout) re-opens it where it stopped, after
a back-off, up to RETRIES times; what fails for good (gone, forbidden, retries spent) ends the shard as
a truncated local one ends, with a warning naming it.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import posixpath
import sys
import time
from collections.abc import Callable

from vitclassifier.errors import UserError
from vitclassifier.urls import PIPE, shown

RETRIES = 5  # re-opens of one shard after transient errors
BACKOFF = 0.5  # seconds before the first re-open; doubled each time
PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
            "http": "aiohttp", "https": "aiohttp"}
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def filesystem(url: str) -> tuple[object, str]:
    """(fsspec filesystem, path in it) of a URL; a store whose package is missing: one line saying which."""
    scheme = url.split("://", 1)[0].lower()
    try:
        from fsspec.core import url_to_fs
        return url_to_fs(url)
    except ImportError:
        package = PACKAGES.get(scheme, "fsspec")
        raise UserError(f"--data {shown(url)}: {scheme}:// URLs need the {package} package: pip install "
                        f"fsspec {package} (or pip install -r requirements-extras.txt)") from None


def store_error(url: str, error: BaseException) -> UserError:
    """One line for a store that cannot be read: which URL (redacted) and what to do."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, FileNotFoundError):
        advice = "no such bucket or object: check the URL"
    elif isinstance(error, PermissionError) or "403" in text or "Forbidden" in text:
        advice = "access denied: check the credentials and their rights on the bucket"
    elif "credential" in text.lower():
        advice = ("no credentials found: set the store's variables (for S3 AWS_ACCESS_KEY_ID and "
                  "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)")
    elif "region" in text.lower() or "PermanentRedirect" in text or "301" in text:
        advice = "the bucket is in another region: set AWS_DEFAULT_REGION (or AWS_REGION) to its region"
    else:
        advice = "check the URL, the network and AWS_ENDPOINT_URL (or the store's endpoint)"
    return UserError(f"--data {shown(url)}: {advice} ({shown(text)[:300]})")


def check_exist(urls: list[str], pattern: str) -> None:
    """Refuse a pattern whose objects are not all there, listing each folder of a store once (not one
    request per shard; a web server is asked per shard); a missing bucket, no credentials, a 403 or a
    wrong region: one line naming the URL."""
    if urls[0].startswith(PIPE):
        return  # a command: it says itself when it fails
    fs, _ = filesystem(urls[0])
    folders: dict[str, set[str] | None] = {}
    missing = []
    for url in urls:
        path = fs._strip_protocol(url)
        folder = posixpath.dirname(path)
        if folder not in folders:
            try:
                web = url.split("://", 1)[0].lower() in ("http", "https")  # no listing: asked one by one
                folders[folder] = None if web else {p.rstrip("/") for p in fs.ls(folder, detail=False)}
            except Exception as error:  # noqa: BLE001 - the stores raise their own kinds; one line for all
                raise store_error(url, error) from None
        listed = folders[folder]
        if (path not in listed) if listed is not None else not _exists(fs, url):
            missing.append(url)
    if missing:
        raise UserError(f"--data {shown(pattern)}: {len(missing)} of its {len(urls)} shard(s) do not exist "
                        f"(first: {shown(missing[0])})")


def _exists(fs, url: str) -> bool:
    try:
        return fs.exists(url)
    except Exception as error:  # noqa: BLE001 - see check_exist
        raise store_error(url, error) from None


def read_small(url: str) -> bytes | None:
    """A small object (index.json) whole, or None where there is none; other errors as store_error."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001 - see check_exist
        raise store_error(url, error) from None


def permanent(error: BaseException) -> bool:
    """Gone or forbidden, not worth a retry; but fsspec's web reader reports a server it cannot reach
    as FileNotFoundError too, with the connection error as its cause: that one is transient."""
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    unreachable = any(isinstance(c, (ConnectionError, TimeoutError)) or "Connect" in type(c).__name__
                      for c in chain)
    return isinstance(error, PERMANENT) and not unreachable


class RetryingReader(io.RawIOBase):
    """A shard's bytes in order, from a file of the store re-opened where it stopped after a transient
    error (waits BACKOFF, 2 x BACKOFF, ...; RETRIES times); then, or at once for a permanent error, an
    OSError naming the URL (redacted)."""

    def __init__(self, url: str, opener: Callable[[], io.IOBase]):
        super().__init__()
        self.url, self.opener, self.position, self.file = url, opener, 0, None
        # a retry re-opens the file itself (_reopen): opening again would leak that connection
        self.file = self._retry(lambda: self.file if self.file is not None else opener())

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        def read() -> int:
            data = self.file.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        count = self._retry(read)
        self.position += count
        return count

    def _reopen(self) -> None:
        self._close_file()
        self.file = self.opener()
        self.file.seek(self.position)

    def _retry(self, action: Callable):
        attempt = 0
        while True:
            try:
                if attempt:
                    self._reopen()
                return action()
            except Exception as error:  # noqa: BLE001 - the stores raise their own kinds for a dropped line
                if permanent(error):
                    raise OSError(f"{type(error).__name__}: {shown(error)}") from None
                if attempt == RETRIES:
                    raise OSError(f"failed {RETRIES + 1} times, last: {type(error).__name__}: "
                                  f"{shown(error)}") from None
                wait = BACKOFF * 2 ** attempt
                print(f"warning: reading {shown(self.url)} failed ({type(error).__name__}: "
                      f"{shown(error)[:200]}); trying again in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
                attempt += 1

    def _close_file(self) -> None:
        file, self.file = getattr(self, "file", None), None
        if file is not None:
            with contextlib.suppress(Exception):  # a broken connection's close has nothing to add
                file.close()

    def close(self) -> None:
        self._close_file()
        super().close()


def open_remote(url: str) -> io.BufferedReader:
    """A shard at a URL as a buffered binary stream (retried), or a pipe: command's output."""
    if url.startswith(PIPE):
        return importlib.import_module("webdataset.gopen").gopen(url, "rb")
    fs, path = filesystem(url)
    return io.BufferedReader(RetryingReader(url, lambda: fs.open(path, "rb")), 1 << 20)

