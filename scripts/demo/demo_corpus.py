"""The demo models' corpus: Jane Austen's six novels from the Debian package r-cran-janeaustenr,
fetched with `apt-get download` and read out of R's lazy-load database without R, cleaned into
paragraphs and split into training and validation paragraphs. Used by scripts/demo/train_demo.py.
"""

import glob
import gzip
import hashlib
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

DEB_PACKAGE = "r-cran-janeaustenr"
DEB_VERSION = "1.0.0-1"  # Debian 12 (bookworm); any other version is used with a warning
# sha256 of the cleaned corpus (all paragraphs joined by "\n\n") from DEB_VERSION: a different
# value means the text changed and the models would not be reproduced exactly.
CORPUS_SHA256 = "6ca617397148ff01983e7112530c4d5c01213acda25a36dfb3a5362deb4880d2"
VAL_FRACTION = 0.05  # the last 5% of each novel's paragraphs


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Corpus: Debian r-cran-janeaustenr, read without R
# --------------------------------------------------------------------------------------------


class RUnserializer:
    """Just enough of R's XDR serialization format (R Internals, 'Serialization Formats') to
    read character vectors and the lazy-load index."""

    def __init__(self, data: bytes):
        self.b, self.p, self.refs = data, 0, []

    def int(self):
        v = struct.unpack_from(">i", self.b, self.p)[0]
        self.p += 4
        return v

    def raw(self, n):
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def read(self):
        assert self.raw(2) == b"X\n", "not an XDR R serialization"
        version = self.int()
        self.int()
        self.int()
        if version == 3:
            self.raw(self.int())  # native encoding
        return self.item()

    def item(self):
        flags = self.int()
        t, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if t == 254:  # NILVALUE
            return None
        if t in (241, 242, 250, 251, 252, 253):  # special environments / markers
            return ("special", t)
        if t == 255:  # REFSXP
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if t == 1:  # SYMSXP
            sym = ("sym", self.item())
            self.refs.append(sym)
            return sym
        if t in (2, 3, 5, 6, 17, 239, 240):  # pairlist-like
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            return ("pair", tag, self.item(), self.item(), attr)
        if t == 9:  # CHARSXP
            n = self.int()
            return None if n == -1 else self.raw(n).decode("utf-8")
        if t in (10, 13, 14, 16, 19, 20):
            n = self.int()
            if n == -1:
                n = (self.int() << 32) + self.int()
            if t in (10, 13):
                v = list(struct.unpack_from(f">{n}i", self.b, self.p))
                self.p += 4 * n
            elif t == 14:
                v = list(struct.unpack_from(f">{n}d", self.b, self.p))
                self.p += 8 * n
            else:
                v = [self.item() for _ in range(n)]
            attr = self.item() if has_attr else None
            return ("vec", t, v, attr)
        raise ValueError(f"unsupported R SEXP type {t}")


def _names(attr):
    """The 'names' attribute of a pairlist of attributes."""
    while attr is not None:
        _, tag, car, cdr, _ = attr
        if tag == ("sym", "names"):
            return car[2]
        attr = cdr
    return None


def read_lazy_load_db(stem: Path) -> dict:
    """{name: R object} for every variable in an R lazy-load database (stem.rdx / stem.rdb)."""
    index = RUnserializer(gzip.decompress(stem.with_suffix(".rdx").read_bytes())).read()
    fields = dict(zip(_names(index[3]), index[2]))
    variables = fields["variables"]
    compressed = fields["compressed"][2][0]
    blob = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (_, _, (off, length), _) in zip(_names(variables[3]), variables[2]):
        rec = blob[off:off + length]
        if compressed in (True, 1):
            data = zlib.decompress(rec[4:])
        else:  # compression types 2/3 (bzip2/xz) carry a type byte after the length
            kind, payload = rec[4:5], rec[5:]
            import bz2
            import lzma
            data = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
                    b"0": lambda x: x}[kind](payload)
        assert len(data) == struct.unpack(">i", rec[:4])[0]
        out[name] = RUnserializer(data).read()
    return out


def fetch_corpus_package(cache: Path) -> dict:
    """Download (once) and unpack the Debian package; returns provenance information."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(glob.glob(str(cache / f"{DEB_PACKAGE}_*.deb")))
    if not debs:
        log(f"downloading Debian package {DEB_PACKAGE} into {cache}")
        attempts = [[f"{DEB_PACKAGE}={DEB_VERSION}"], [DEB_PACKAGE]]
        for i, spec in enumerate(attempts + attempts):
            if i == len(attempts):  # nothing worked: refresh the package lists and retry
                subprocess.run(["apt-get", "update", "-qq"], check=False)
            r = subprocess.run(["apt-get", "download", *spec], cwd=cache, capture_output=True, text=True)
            if r.returncode == 0:
                break
            log(f"  apt-get download {spec[0]} failed: {r.stderr.strip()[-300:]}")
        else:
            raise SystemExit(f"could not download {DEB_PACKAGE} with apt-get (Debian's package registry)")
        debs = sorted(glob.glob(str(cache / f"{DEB_PACKAGE}_*.deb")))
    deb = Path(debs[-1])
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if version != DEB_VERSION:
        log(f"WARNING: {DEB_PACKAGE} version {version} != {DEB_VERSION}: the corpus may differ")
    unpacked = cache / f"{DEB_PACKAGE}_{version}"
    if not (unpacked / "usr").exists():
        tmp = cache / "unpack.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(unpacked)
    pkgdir = unpacked / "usr/lib/R/site-library/janeaustenr"
    desc = (pkgdir / "DESCRIPTION").read_text()
    upstream = re.search(r"^Version:\s*(\S+)", desc, re.M).group(1)
    copyright_file = unpacked / "usr/share/doc" / DEB_PACKAGE / "copyright"
    lic = re.search(r"^License:\s*(\S+)", copyright_file.read_text(), re.M).group(1)
    return {
        "deb": deb.name,
        "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "debian_version": version,
        "upstream": f"janeaustenr {upstream} (CRAN, Julia Silge)",
        "package_licence": lic,
        "data": pkgdir / "data" / "Rdata",
    }


BOOKS = [  # R object name, title (publication order)
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
]
HEADING = re.compile(r"^(chapter|volume)\b", re.I)
END = re.compile(r"^(the end|finis)$", re.I)


def clean_book(lines) -> list:
    paras, cur = [], []
    for line in lines + [""]:
        line = (line or "").strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    start = next(i for i, p in enumerate(paras) if HEADING.match(p))
    end = next((i for i, p in enumerate(paras) if END.match(p)), len(paras))
    out = []
    for p in paras[start:end]:
        if HEADING.match(p) or p.upper() == p:
            continue
        p = p.replace("_", "")
        p = re.sub(r"\s+", " ", p).strip()
        if p:
            out.append(p)
    return out


def load_corpus(cache: Path):
    info = fetch_corpus_package(cache)
    objs = read_lazy_load_db(info["data"])
    books = []
    for key, title in BOOKS:
        _, t, lines, _ = objs[key]
        assert t == 16, (key, t)
        books.append((title, clean_book(lines)))
    text = "\n\n".join(p for _, ps in books for p in ps)
    info["corpus_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    info["corpus_chars"] = len(text)
    info["corpus_words"] = len(text.split())
    info["paragraphs"] = sum(len(ps) for _, ps in books)
    if CORPUS_SHA256 and info["corpus_sha256"] != CORPUS_SHA256:
        log(f"WARNING: corpus sha256 {info['corpus_sha256']} != expected {CORPUS_SHA256}")
    return books, info


def split_books(books):
    train, val = [], []
    for _, ps in books:
        n_val = max(1, round(len(ps) * VAL_FRACTION))
        train += ps[:-n_val]
        val += ps[-n_val:]
    return train, val


