"""Streaming archives over HTTP(S) or from a file:// mirror, each checked as far as it can
be before the next URL is tried.

The HTTP client is urllib from the standard library rather than httpx: it is always there (httpx
only arrives as a dependency of flwr, which could drop it), it follows the redirects figshare
uses, honours the usual HTTPS_PROXY/NO_PROXY variables, and opens file:// URLs, so a folder of
archives works as an offline mirror. Its one gap, a silently short body when the server closes
early, is covered by comparing the byte count with Content-Length ourselves.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from fedmedlora.data.download.catalog import CHUNK_BYTES, DatasetSpec, Source, file_problems
from fedmedlora.data.download.errors import (
    ArchiveError,
    ChecksumError,
    DestinationError,
    DownloadError,
    TransferError,
)
from fedmedlora.data.download.unpacking import Budget, extract_members

TIMEOUT_S = 60  # per socket operation, not per download: slow but live transfers keep going
MIRROR_ENV = "FEDMEDLORA_MIRROR"


def mirror_url(base: str, name: str, filename: str) -> str:
    """Where a mirror serves an archive: BASE/<corpus name>/<archive file name>."""
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in {"http", "https", "file"}:
        raise DownloadError(f"mirror {base!r}: expected an http://, https:// or file:// URL")
    return f"{base.rstrip('/')}/{urllib.parse.quote(name)}/{urllib.parse.quote(filename)}"


def _user_agent() -> str:
    # Some hosts (figshare among them) turn away urllib's default agent.
    try:
        return f"fedmedlora/{metadata.version('fedmedlora')} (python-urllib)"
    except metadata.PackageNotFoundError:
        return "fedmedlora (python-urllib)"


def _open(url: str) -> http.client.HTTPResponse | urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the error page's open connection
        raise TransferError(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # file:// mirror
            raise TransferError(url, "no such file on the mirror") from None
        raise TransferError(url, f"network failure: {exc.reason}") from None
    except (http.client.HTTPException, OSError) as exc:
        raise TransferError(url, f"network failure: {exc!r}") from None


def _fetch(url: str, target: Path, bar: Progress, label: str) -> str:
    """Stream `url` into `target`; return its sha256. Raise TransferError on any shortfall."""
    received = 0
    digest = hashlib.sha256()
    with _open(url) as response:
        header = response.headers.get("Content-Length", "")
        expected = int(header) if header.strip().isdigit() else None
        task = bar.add_task(label, total=expected)
        try:
            out = target.open("wb")
        except OSError as exc:
            raise DestinationError(f"cannot write {target}: {exc.strerror}") from None
        with out:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except http.client.IncompleteRead:
                    raise TransferError(
                        url,
                        f"connection closed early, after {received:,} bytes (transfer incomplete)",
                    ) from None
                except (http.client.HTTPException, OSError) as exc:
                    raise TransferError(
                        url, f"network failure after {received:,} bytes: {exc!r}"
                    ) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise DestinationError(f"cannot write {target}: {exc.strerror}") from None
                digest.update(chunk)
                received += len(chunk)
                bar.advance(task, len(chunk))
    if expected is not None and received != expected:
        # urllib's read(n) returns b"" instead of raising when the server hangs up early.
        raise TransferError(
            url,
            f"connection closed early: received {received:,} of {expected:,} bytes "
            "announced by Content-Length (transfer incomplete)",
        )
    return digest.hexdigest()


def _try_url(
    spec: DatasetSpec,
    source: Source,
    url: str,
    work: Path,
    bar: Progress,
    budget: Budget,
) -> tuple[Path, list[str]]:
    """Fetch and extract one archive into a fresh folder; check what can be checked already."""
    handle, name = tempfile.mkstemp(prefix=source.filename, dir=work)
    os.close(handle)  # _fetch reopens it; mkstemp only reserves a unique name
    archive = Path(name)
    part = Path(tempfile.mkdtemp(prefix=f"{source.filename}.", dir=work))
    try:
        digest = _fetch(url, archive, bar, f"{spec.name}: {source.filename}")
        if source.sha256 is not None and digest != source.sha256:
            raise ChecksumError(f"{url}: archive sha256 {digest}, pinned {source.sha256}")
        produced = extract_members(archive, source, url, part, budget)
    finally:
        archive.unlink(missing_ok=True)
    pinned = spec.pins.files
    if pinned is not None:  # per-file pins can be checked now, so a bad URL falls through
        problems = [f"{rel}: not in the pins" for rel in produced if rel not in pinned]
        problems += file_problems(part, pinned, [rel for rel in produced if rel in pinned])
        if problems:
            raise ChecksumError(
                f"{url}: content differs from the pinned checksums:\n  " + "\n  ".join(problems)
            )
    return part, produced


def fetch_source(
    spec: DatasetSpec,
    source: Source,
    urls: list[str],
    work: Path,
    staged: Path,
    bar: Progress,
    budget: Budget,
) -> None:
    """Bring one archive's members into `staged`, trying each URL until one passes."""
    failures: list[DownloadError] = []
    for url in urls:
        trial = Budget(budget.left)
        try:
            part, produced = _try_url(spec, source, url, work, bar, trial)
        except DownloadError as exc:
            failures.append(exc)
            continue
        for rel in produced:
            if (staged / rel).exists():
                raise ArchiveError(f"{url}: {rel} also comes from an earlier archive")
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(part / rel, staged / rel)
        budget.left = trial.left
        return
    if len(failures) == 1:
        raise failures[0]
    listed = "\n  ".join(str(f) for f in failures)
    raise DownloadError(f"could not fetch {source.filename} from any source:\n  {listed}")


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with bar:
        yield bar
