"""--data as a URL (``s3://``, ``gs://``, ``az://``, ``https://``, ``pipe:``) rather than a local path,
and any such text as it may be shown or recorded: without the secrets a URL can carry (``user:password@``,
a query's signature or token) and without the credential values of the environment (an error from a
store may quote the access key). Shared, because the configuration keeps a URL as text (a ``Path``
would fold its ``//``) and every layer that prints or records --data redacts it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from vitclassifier.text import printable

SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https")  # read through fsspec
PIPE = "pipe:"  # a shell command whose output is the shard (as webdataset's pipe: URLs)
URL = re.compile(rf"^(?:{'|'.join(SCHEMES)})://", re.IGNORECASE)
USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
QUERY = re.compile(r"(://[^\s?#'\"]*)\?[^\s'\"#]*")
HIDDEN = "***"
# The environment's credentials: their values never appear in what we show (4+ characters: no short words)
SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY",
                    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_SECRET",
                    "GOOGLE_APPLICATION_CREDENTIALS_JSON", "HF_TOKEN")


def is_url(text: object) -> bool:
    """Whether --data names an object-store or web URL, or a pipe: command, rather than a local path."""
    return isinstance(text, str) and (text.startswith(PIPE) or bool(URL.match(text)))


def data_location(text: str) -> Path | str:
    """The argparse type of --data: a URL stays text (as given), anything else is a local Path."""
    return text if is_url(text) else Path(text)


def redact(text: str) -> str:
    """``text`` with a URL's user:password and query (signatures, tokens) and the environment's
    credential values replaced by ``***``."""
    text = QUERY.sub(rf"\1?{HIDDEN}", USERINFO.sub(rf"\1{HIDDEN}@", text))
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, HIDDEN)
    return text


def shown(value: object) -> str:
    """A path or URL as a message shows it: redacted, and printable (text.printable)."""
    return printable(redact(str(value)))


def base_name(location: str) -> str:
    """A shard's file name (its last path part, without a query), redacted: sample names and warnings."""
    plain = location.split("?", 1)[0] if is_url(location) else location
    return redact(plain.rstrip("/").rsplit("/", 1)[-1])
