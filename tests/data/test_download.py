"""The corpus downloader against a local HTTP mirror.

Archives are rebuilt on the fly from ../shared/data in the shape of the official releases and
served by http.server on 127.0.0.1, so every failure mode (bad checksum, truncated body, 404,
refused connection) is exercised without internet.
"""

from __future__ import annotations

import filecmp
import http.server
import shutil
import socket
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmedlora.cli.main import app
from fedmedlora.data.download import (
    ArchiveError,
    ChecksumError,
    DatasetSpec,
    DestinationError,
    DownloadError,
    TransferError,
    UnknownDatasetError,
    check_dataset,
    download_dataset,
    get_spec,
    load_catalog,
    mirror_url,
    sha256_file,
)
from fedmedlora.errors import FedMedLoRAError

CORPORA = ("maccrobat", "chia", "bc5cdr", "ncbi_disease")
NCBI_SPLITS = ("train", "develop", "test")
NCBI_FILES = sorted(f"NCBI{s}set_corpus.txt" for s in NCBI_SPLITS)
NCBI_LISTING = ["ncbi_disease", *(f"ncbi_disease/{n}" for n in NCBI_FILES)]


# --- archives in the official shape -------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for arcname, content in members.items():
            if isinstance(content, Path):
                zf.write(content, arcname)
            else:
                zf.writestr(arcname, content)
    return path


def _build_archives(shared: Path, out: Path) -> dict[str, dict[str, Path]]:
    """{corpus: {archive file name: path}} mirroring the official archives' layout."""
    out.mkdir(parents=True, exist_ok=True)
    ncbi = {
        f"NCBI{s}set_corpus.zip": _zip(
            out / f"NCBI{s}set_corpus.zip",
            {f"NCBI{s}set_corpus.txt": shared / "ncbi_disease" / f"NCBI{s}set_corpus.txt"},
        )
        for s in NCBI_SPLITS
    }
    brat = shared / "maccrobat" / "MACCROBAT2020"
    maccrobat = {p.name: p for p in sorted(brat.iterdir())}
    # Archives zipped on a Mac carry AppleDouble junk; it must not end up in the corpus.
    maccrobat["__MACOSX/._15939911.txt"] = b"\x00\x05\x16\x07"
    cdr = {
        f"CDR_Data/CDR.Corpus.v010516/{p.name}": p
        for p in sorted((shared / "bc5cdr").glob("CDR_*Set.PubTator.txt"))
    }
    cdr["CDR_Data/README.txt"] = shared / "bc5cdr" / "README.txt"
    # The release also holds BioC XML, which the catalog does not keep.
    cdr["CDR_Data/CDR.Corpus.v010516/CDR_TrainingSet.BioC.xml"] = b"<collection/>\n"
    return {
        "ncbi_disease": ncbi,
        "maccrobat": {"MACCROBAT2020.zip": _zip(out / "MACCROBAT2020.zip", maccrobat)},
        "bc5cdr": {"CDR_Data.zip": _zip(out / "CDR_Data.zip", cdr)},
    }


@pytest.fixture(scope="module")
def archives(shared_data: Path, tmp_path_factory) -> dict[str, dict[str, Path]]:
    return _build_archives(shared_data, tmp_path_factory.mktemp("archives"))


# --- a local mirror -----------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    """Serves `root`; answers paths in `truncated` with a body shorter than Content-Length."""

    daemon_threads = True
    root: Path
    truncated: set[str]
    requests: list[str]


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path not in self.server.truncated:
            return super().do_GET()
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body) + 50_000))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True  # hang up with the promised bytes still owed


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[_Server]:
    root = tmp_path_factory.mktemp("www")

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    srv = _Server(("127.0.0.1", 0), handler)
    srv.root, srv.truncated, srv.requests = root, set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@dataclass
class Mirror:
    """One test's corner of the server: BASE/<name>/<archive>."""

    server: _Server
    dir: Path
    url: str
    prefix: str

    def publish(self, name: str, archives: dict[str, Path]) -> None:
        for filename, path in archives.items():
            target = self.dir / name / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)

    def truncate(self, name: str, filename: str) -> None:
        self.server.truncated.add(f"{self.prefix}/{name}/{filename}")

    def requests(self) -> list[str]:
        return [p for p in self.server.requests if p.startswith(self.prefix + "/")]


@pytest.fixture
def mirror(server: _Server, monkeypatch) -> Mirror:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FEDMEDLORA_MIRROR", raising=False)
    prefix = f"/{uuid.uuid4().hex}"
    folder = server.root / prefix[1:]
    folder.mkdir()
    host, port = server.server_address[:2]
    return Mirror(server, folder, f"http://{host}:{port}{prefix}", prefix)


def _listing(folder: Path) -> list[str]:
    """Everything under `folder`, hidden files included, to prove nothing was left behind."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _same_files(left: Path, right: Path, names: list[str]) -> bool:
    match, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    return sorted(match) == sorted(names) and not mismatch and not errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the catalog --------------------------------------------------------------------------


def test_catalog_covers_the_four_corpora_with_sources_licence_and_citation():
    catalog = load_catalog()
    assert sorted(catalog) == sorted(CORPORA)
    for spec in catalog.values():
        assert spec.licence and spec.citation and spec.provenance
        assert all(url.startswith("https://") for s in spec.sources for url in s.urls)


@pytest.mark.parametrize("name", CORPORA)
def test_pins_match_the_shared_copy(shared_data: Path, name: str):
    assert check_dataset(get_spec(name), shared_data / name) == []


def test_unknown_corpus_names_the_known_ones(tmp_path):
    with pytest.raises(UnknownDatasetError) as err:
        download_dataset("i2b2", tmp_path / "data", progress=False)
    assert "'i2b2'" in str(err.value)
    assert "bc5cdr, chia, maccrobat, ncbi_disease" in str(err.value)
    assert isinstance(err.value, FedMedLoRAError)
    assert not (tmp_path / "data").exists()


def test_names_are_forgiving_about_case_and_dashes():
    assert get_spec("NCBI-Disease").name == "ncbi_disease"


def test_mirror_must_be_a_url():
    with pytest.raises(DownloadError, match="expected an http"):
        mirror_url("/srv/mirror", "chia", "chia_without_scope.zip")
    assert (
        mirror_url("https://m.example.org/corpora/", "bc5cdr", "CDR_Data.zip")
        == "https://m.example.org/corpora/bc5cdr/CDR_Data.zip"
    )


# --- successful downloads -----------------------------------------------------------------


def test_ncbi_disease_download_is_identical_to_the_shared_copy(
    mirror, archives, shared_data, tmp_path
):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    result = download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)

    assert (result.status, result.files) == ("downloaded", 3)
    assert result.path == tmp_path / "ncbi_disease"
    assert _listing(tmp_path) == NCBI_LISTING  # no leftover partial folder
    assert _same_files(tmp_path / "ncbi_disease", shared_data / "ncbi_disease", NCBI_FILES)


def test_maccrobat_download_is_identical_to_the_shared_copy(
    mirror, archives, shared_data, tmp_path
):
    mirror.publish("maccrobat", archives["maccrobat"])
    result = download_dataset("maccrobat", tmp_path, mirror=mirror.url, progress=False)

    got, want = (
        tmp_path / "maccrobat" / "MACCROBAT2020",
        shared_data / "maccrobat" / "MACCROBAT2020",
    )
    names = sorted(p.name for p in want.iterdir())
    assert result.files == 400
    assert sorted(p.name for p in got.iterdir()) == names  # no __MACOSX junk
    assert _same_files(got, want, names)
    assert _listing(tmp_path) == ["maccrobat", "maccrobat/MACCROBAT2020"] + [
        f"maccrobat/MACCROBAT2020/{n}" for n in names
    ]


def test_chia_download_verifies_its_4004_file_manifest(mirror, shared_data, tmp_path):
    brat = shared_data / "chia" / "chia_without_scope"
    (mirror.dir / "chia").mkdir()
    _zip(mirror.dir / "chia" / "chia_without_scope.zip", {p.name: p for p in brat.iterdir()})

    result = download_dataset("chia", tmp_path, mirror=mirror.url, progress=False)
    got = tmp_path / "chia" / "chia_without_scope"
    names = sorted(p.name for p in brat.iterdir())
    assert result.files == 4004
    assert sorted(p.name for p in got.iterdir()) == names
    assert _same_files(got, brat, names)


def test_bc5cdr_keeps_only_the_pinned_files(mirror, archives, shared_data, tmp_path):
    mirror.publish("bc5cdr", archives["bc5cdr"])
    download_dataset("bc5cdr", tmp_path, mirror=mirror.url, progress=False)

    names = sorted(get_spec("bc5cdr").pins.files or {})
    assert sorted(p.name for p in (tmp_path / "bc5cdr").iterdir()) == names  # no BioC XML
    assert _same_files(tmp_path / "bc5cdr", shared_data / "bc5cdr", names)


def test_mirror_can_come_from_the_environment_through_the_cli(mirror, archives, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    runner = CliRunner()
    args = ["data", "download", "ncbi-disease", "--dest", str(tmp_path)]

    first = runner.invoke(app, args, env={"FEDMEDLORA_MIRROR": mirror.url})  # with progress
    assert first.exit_code == 0, first.output
    assert "Downloaded ncbi_disease: 3 files verified" in first.output
    second = runner.invoke(app, [*args, "--quiet"], env={"FEDMEDLORA_MIRROR": mirror.url})
    assert second.exit_code == 0, second.output
    assert "already present" in second.output
    assert len(mirror.requests()) == 3

    unknown = runner.invoke(app, ["data", "download", "mimic", "--dest", str(tmp_path)])
    assert unknown.exit_code == 2 and "Traceback" not in unknown.output
    assert "known corpora: bc5cdr, chia, maccrobat, ncbi_disease" in unknown.output


# --- an existing copy ---------------------------------------------------------------------


def test_a_verified_copy_is_not_downloaded_again_unless_forced(mirror, archives, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    assert len(mirror.requests()) == 3

    again = download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    assert again.status == "present"
    assert len(mirror.requests()) == 3

    forced = download_dataset(
        "ncbi_disease", tmp_path, mirror=mirror.url, progress=False, force=True
    )
    assert forced.status == "downloaded"
    assert len(mirror.requests()) == 6
    assert _listing(tmp_path) == NCBI_LISTING


def test_a_copy_that_does_not_verify_is_only_replaced_with_force(mirror, archives, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    damaged = tmp_path / "ncbi_disease" / "NCBItestset_corpus.txt"
    damaged.write_text("edited by hand\n")

    with pytest.raises(DestinationError, match="--force") as err:
        download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    assert "NCBItestset_corpus.txt: 15 bytes, pinned 189,219" in str(err.value)
    assert damaged.read_text() == "edited by hand\n"

    download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False, force=True)
    assert check_dataset(get_spec("ncbi_disease"), tmp_path / "ncbi_disease") == []


def test_a_failed_forced_download_keeps_the_existing_copy(mirror, archives, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    before = _listing(tmp_path)
    (mirror.dir / "ncbi_disease" / "NCBItestset_corpus.zip").unlink()

    with pytest.raises(TransferError, match="HTTP 404"):
        download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False, force=True)
    assert _listing(tmp_path) == before
    assert check_dataset(get_spec("ncbi_disease"), tmp_path / "ncbi_disease") == []


# --- failures leave nothing behind --------------------------------------------------------


def test_a_modified_file_is_rejected_and_dest_is_untouched(mirror, archives, shared_data, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    text = (shared_data / "ncbi_disease" / "NCBItrainset_corpus.txt").read_bytes()
    _zip(
        mirror.dir / "ncbi_disease" / "NCBItrainset_corpus.zip",
        {"NCBItrainset_corpus.txt": text.replace(b"Disease", b"Disorder", 1)},
    )
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")

    with pytest.raises(ChecksumError) as err:
        download_dataset("ncbi_disease", dest, mirror=mirror.url, progress=False)
    message = str(err.value)
    assert f"{mirror.url}/ncbi_disease/NCBItrainset_corpus.zip" in message
    assert "NCBItrainset_corpus.txt: 1,045,966 bytes, pinned 1,045,965" in message
    assert _listing(dest) == ["notes.txt"]


def test_a_modified_brat_file_fails_the_manifest(mirror, archives, shared_data, tmp_path):
    brat = shared_data / "maccrobat" / "MACCROBAT2020"
    members: dict[str, bytes | Path] = {p.name: p for p in brat.iterdir()}
    members["15939911.ann"] = (brat / "15939911.ann").read_bytes().replace(b"T1\t", b"T9\t", 1)
    (mirror.dir / "maccrobat").mkdir()
    _zip(mirror.dir / "maccrobat" / "MACCROBAT2020.zip", members)
    dest = tmp_path / "new" / "data"

    with pytest.raises(ChecksumError) as err:
        download_dataset("maccrobat", dest, mirror=mirror.url, progress=False)
    assert "MACCROBAT2020/: 400 files, 2,620,541 bytes, manifest sha256" in str(err.value)
    assert mirror.url in str(err.value)
    assert not (tmp_path / "new").exists()  # folders it created are taken back


def test_a_truncated_transfer_is_reported_and_nothing_is_left(mirror, archives, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    mirror.truncate("ncbi_disease", "NCBIdevelopset_corpus.zip")

    with pytest.raises(TransferError) as err:
        download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    assert err.value.url == f"{mirror.url}/ncbi_disease/NCBIdevelopset_corpus.zip"
    size = archives["ncbi_disease"]["NCBIdevelopset_corpus.zip"].stat().st_size
    assert f"of {size + 50_000:,} bytes" in err.value.reason
    assert "transfer incomplete" in err.value.reason
    assert _listing(tmp_path) == []


def test_a_missing_file_is_reported_and_nothing_is_left(mirror, archives, tmp_path):
    mirror.publish("ncbi_disease", archives["ncbi_disease"])
    (mirror.dir / "ncbi_disease" / "NCBItestset_corpus.zip").unlink()

    with pytest.raises(TransferError) as err:
        download_dataset("ncbi_disease", tmp_path, mirror=mirror.url, progress=False)
    assert err.value.url.endswith("/ncbi_disease/NCBItestset_corpus.zip")
    assert err.value.reason == "HTTP 404 File not found"
    assert _listing(tmp_path) == []


def test_a_network_failure_is_reported_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    base = f"http://127.0.0.1:{_closed_port()}/corpora"

    with pytest.raises(TransferError) as err:
        download_dataset("ncbi_disease", tmp_path / "data", mirror=base, progress=False)
    assert err.value.url == f"{base}/ncbi_disease/NCBItrainset_corpus.zip"
    assert err.value.reason.startswith("network failure")
    assert not (tmp_path / "data").exists()


def test_an_error_page_instead_of_a_zip_is_named_as_such(mirror, tmp_path):
    page = mirror.dir / "maccrobat" / "MACCROBAT2020.zip"
    page.parent.mkdir()
    page.write_text("<html><body>Access denied</body></html>")

    with pytest.raises(ArchiveError, match=r"not a zip archive .* error page"):
        download_dataset("maccrobat", tmp_path, mirror=mirror.url, progress=False)
    assert _listing(tmp_path) == []


# --- archive pins and fallback URLs -------------------------------------------------------


def _with_sources(spec: DatasetSpec, **changes) -> dict[str, DatasetSpec]:
    sources = tuple(s.model_copy(update=changes) for s in spec.sources)
    return {spec.name: spec.model_copy(update={"sources": sources})}


def test_an_archive_sha256_is_enforced_when_pinned(mirror, archives, tmp_path):
    mirror.publish("bc5cdr", archives["bc5cdr"])
    spec = get_spec("bc5cdr")
    wrong = _with_sources(spec, sha256="0" * 64)
    with pytest.raises(ChecksumError) as err:
        download_dataset("bc5cdr", tmp_path, mirror=mirror.url, progress=False, catalog=wrong)
    assert f"{mirror.url}/bc5cdr/CDR_Data.zip: archive sha256" in str(err.value)
    assert _listing(tmp_path) == []

    right = _with_sources(spec, sha256=sha256_file(archives["bc5cdr"]["CDR_Data.zip"]))
    result = download_dataset("bc5cdr", tmp_path, mirror=mirror.url, progress=False, catalog=right)
    assert result.status == "downloaded"


def test_the_next_official_url_is_tried_when_one_fails(mirror, archives, tmp_path):
    mirror.publish("bc5cdr", archives["bc5cdr"])
    urls = (f"{mirror.url}/gone/CDR_Data.zip", f"{mirror.url}/bc5cdr/CDR_Data.zip")
    catalog = _with_sources(get_spec("bc5cdr"), urls=urls)

    result = download_dataset("bc5cdr", tmp_path, progress=False, catalog=catalog)
    assert result.status == "downloaded"
    assert mirror.requests() == [
        f"{mirror.prefix}/gone/CDR_Data.zip",
        f"{mirror.prefix}/bc5cdr/CDR_Data.zip",
    ]
