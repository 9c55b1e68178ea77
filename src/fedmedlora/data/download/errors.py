"""What can go wrong in a download; every error leaves the destination unchanged."""

from __future__ import annotations

from fedmedlora.errors import FedMedLoRAError


class DownloadError(FedMedLoRAError):
    """A corpus could not be fetched, verified or put in place; the destination is unchanged."""


class UnknownDatasetError(DownloadError):
    """The name is not in the catalog."""


class TransferError(DownloadError):
    """The server or the network failed: HTTP error, refused connection, truncated body."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}")


class ChecksumError(DownloadError):
    """What was downloaded differs from what the catalog pins."""


class ArchiveError(DownloadError):
    """The archive cannot be read or lacks the members the catalog names."""


class DestinationError(DownloadError):
    """The destination cannot be written, or holds a copy that does not verify."""
