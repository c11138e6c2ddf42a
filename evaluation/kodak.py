"""The Kodak test set (24 768×512 PNGs, the standard image-compression benchmark): where to
download it and the sha256 of every file, so a download (or an existing folder) can be checked
byte for byte. Offline machines copy the images in by hand and pass ``--images DIR``."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnncodec.codec.errors import CodecError
from rnncodec.data.files import file_digest, write_atomic

BASE_URL = "https://r0k.us/graphics/kodak/kodak/"
SHA256 = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "kodim08.png": "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "kodim09.png": "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "kodim10.png": "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "kodim19.png": "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "kodim23.png": "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "kodim24.png": "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
}
NAMES = tuple(SHA256)
URLS = {name: BASE_URL + name for name in NAMES}


def verify_kodak(folder: str | Path) -> dict[str, str]:
    """Check the Kodak images in ``folder``: ``{name: "ok" | "missing" | "mismatch"}``."""
    folder = Path(folder)
    status = {}
    for name, digest in SHA256.items():
        path = folder / name
        status[name] = "missing" if not path.is_file() else "ok" if file_digest(path) == digest else "mismatch"
    return status


def _fetch(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "rnncodec"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def download_kodak(dest: str | Path, *, timeout: float = 60.0, fetch: Callable[[str, float], bytes] | None = None,
                   console: Any = None) -> list[Path]:
    """Download the Kodak images that ``dest`` lacks (or holds corrupted), checking each
    against its sha256 before writing it atomically; returns the 24 paths. Raises
    :class:`CodecError` naming ``--images DIR`` when the network cannot be reached."""
    dest = Path(dest)
    fetch = fetch or _fetch
    status = verify_kodak(dest) if dest.is_dir() else dict.fromkeys(NAMES, "missing")
    todo = [n for n, s in status.items() if s != "ok"]
    for i, name in enumerate(todo):
        url = URLS[name]
        if console is not None:
            console.print(f"downloading {url} ({i + 1}/{len(todo)})")
        try:
            data = fetch(url, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CodecError(f"could not download {url} ({reason}); on a machine without internet, copy the "
                             "24 Kodak PNGs (kodim01.png … kodim24.png) into a folder and pass --images DIR") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[name]:
            raise CodecError(f"{url} downloaded with sha256 {digest[:16]}…, expected {SHA256[name][:16]}…; "
                             "nothing was written; try again or copy the images in and pass --images DIR")
        write_atomic(dest / name, data)
    return [dest / n for n in NAMES]
