"""Members of a zip archive written out under a byte budget: only those the catalog
names, never outside the corpus folder, never more bytes than the pins hold."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedmedlora.data.download.catalog import CHUNK_BYTES, Source, matches
from fedmedlora.data.download.errors import ArchiveError, ChecksumError


@dataclass
class Budget:
    """Caps what extraction may write, so a hostile or broken archive cannot fill the disk."""

    left: int

    def take(self, n: int, url: str) -> None:
        self.left -= n
        if self.left < 0:
            raise ChecksumError(f"{url}: extracts to more bytes than the pinned files hold")


def extract_members(
    archive: Path, source: Source, url: str, out_dir: Path, budget: Budget
) -> list[str]:
    """Write the members `source` keeps, flat under out_dir/<into>; return their paths."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        with archive.open("rb") as handle:
            head = handle.read(40)
        raise ArchiveError(
            f"{url}: not a zip archive ({archive.stat().st_size:,} bytes starting {head!r}); "
            "the server may have sent an error page"
        ) from None
    with zf:
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            member = PurePosixPath(info.filename)
            if info.is_dir() or "__MACOSX" in member.parts or member.name.startswith("._"):
                continue
            if not matches(member, source.members):
                continue
            rel = (PurePosixPath(source.into) / member.name).as_posix()
            if rel in chosen:
                raise ArchiveError(
                    f"{url}: members {chosen[rel].filename!r} and {info.filename!r} "
                    f"would both become {rel}"
                )
            chosen[rel] = info
        if not chosen:
            raise ArchiveError(f"{url}: no member matches {', '.join(source.members)}")
        try:
            for rel, info in chosen.items():
                path = out_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, path.open("wb") as dst:
                    while chunk := src.read(CHUNK_BYTES):
                        budget.take(len(chunk), url)
                        dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ArchiveError(f"{url}: corrupt archive: {exc}") from None
    return sorted(chosen)
