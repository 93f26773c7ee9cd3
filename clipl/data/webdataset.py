"""WebDataset shards as a source: pattern expansion, opening local/fsspec/`pipe:` URLs, streaming tar reads.

A source is a list of shards plus (when known) their sizes and a way to turn a raw sample into an
(image bytes, caption) pair. Reading never raises on bad data: problems become BadSample / skip counts.
"""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import IO, Iterator, Optional

import numpy as np
from braceexpand import braceexpand

from clipl.data.skip import BadSample, SkipCounter
from clipl.data.wds_format import CAPTION_EXTENSION, IMAGE_EXTENSIONS, Members, split_member

Raw = tuple[str, dict]  # (key, {member extension: bytes})


def _is_url(path: str) -> bool:
    return path.startswith("pipe:") or "://" in path


def brace_expand(pattern: str) -> list[str]:
    """"a/{000..009}.tar" -> the 10 names; the one expansion rule of the training and evaluation readers."""
    return list(braceexpand(pattern))


def expand_pattern(pattern: str, field: str = "data.train") -> list[str]:
    """Brace-expand (and glob, for local paths) one source pattern; error naming it if nothing matches."""
    out: list[str] = []
    for item in brace_expand(pattern.strip()):
        if _is_url(item):
            out.append(item)
        elif any(c in item for c in "*?["):
            out += sorted(glob.glob(os.path.expanduser(item)))
        elif os.path.isdir(os.path.expanduser(item)):  # a folder of shards, e.g. what `clipl data pack` wrote
            out += sorted(glob.glob(os.path.join(os.path.expanduser(item), "*.tar")))
        else:
            out.append(os.path.expanduser(item))
    local = [u for u in out if not _is_url(u)]
    if not out or (local and len(local) == len(out) and not any(os.path.exists(u) for u in local)):
        raise FileNotFoundError(f"{field}: shard pattern {pattern!r} matched no files")
    return out


def open_url(url: str) -> IO[bytes]:
    """A readable binary stream: `pipe:CMD` (stdout of a shell command), fsspec URLs, or a local path."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return io.BufferedReader(_PipeStream(proc))
    if "://" in url and not url.startswith("file://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


class _PipeStream(io.RawIOBase):
    """Wraps a subprocess' stdout; a non-zero exit status becomes a read error (an unreadable shard)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.proc.stdout.readinto(b)
        if n == 0 and self.proc.wait() != 0:
            raise OSError(f"pipe command exited with status {self.proc.returncode}")
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.stdout.close()
        self.proc.wait()
        super().close()


def iter_tar(url: str, counter: Optional[SkipCounter] = None) -> Iterator[Raw]:
    """Stream the samples of one tar shard; a missing/unreadable shard is counted and ends the shard."""
    key, members, failed = None, {}, False
    try:
        if not _is_url(url) and not os.path.exists(url):
            if counter is not None:
                counter.skip("missing_shard")
            return
        with open_url(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_member(info.name)
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, {}
                members[ext] = tar.extractfile(info).read()
    except (OSError, tarfile.TarError, EOFError, ValueError):
        failed = True
        if counter is not None:
            counter.skip("unreadable_shard")
    # Samples completed before a read failure are still good; the one being read when it failed is dropped.
    if key is not None and members and not failed:
        yield key, members


def shard_size(url: str) -> Optional[int]:
    """Samples in a shard from sizes.json ({basename: n}) or img2dataset's <shard>_stats.json, if present."""
    if _is_url(url):
        return None
    p = Path(url)
    sizes = _sizes_json(str(p.parent))
    if p.name in sizes:
        return int(sizes[p.name])
    stats = p.with_name(p.name.split(".")[0] + "_stats.json")
    if stats.exists():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"{stats}: cannot read 'successes' ({e!r})") from None
    return None


_SIZES_CACHE: dict[str, dict] = {}


def _sizes_json(folder: str) -> dict:
    if folder not in _SIZES_CACHE:
        f = Path(folder) / "sizes.json"
        try:
            _SIZES_CACHE[folder] = json.loads(f.read_text()) if f.exists() else {}
        except ValueError as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from None
    return _SIZES_CACHE[folder]


def pick_caption(value, rng: np.random.Generator) -> str:
    """A caption string from a str or a list of str (random choice); empty/whitespace -> BadSample."""
    if isinstance(value, (list, tuple, np.ndarray)):
        value = [v for v in value if isinstance(v, str) and v.strip()]
        if not value:
            raise BadSample("empty_caption", "no non-empty caption in the list")
        value = value[int(rng.integers(len(value)))]
    if not isinstance(value, str):
        raise BadSample("missing_caption", f"caption is {type(value).__name__}, not text")
    if not value.strip():
        raise BadSample("empty_caption")
    return value.strip()


class WebDatasetSource:
    """Tar shards in img2dataset layout ({key}.jpg|png|webp, {key}.txt, {key}.json); which member is the
    image and which the caption follows clipl.data.wds_format (``data.image_key``/``data.caption_key``)."""

    def __init__(self, pattern: str, image_key: str = ";".join(IMAGE_EXTENSIONS), caption_key: str = CAPTION_EXTENSION,
                 field: str = "data.train"):
        self.pattern = pattern
        self.shards = expand_pattern(pattern, field)
        self.sizes = [shard_size(u) for u in self.shards]
        self.members = Members.from_keys(image_key, caption_key)

    def iter_shard(self, shard: str, counter: Optional[SkipCounter] = None) -> Iterator[Raw]:
        return iter_tar(shard, counter)

    def extract(self, members: dict, rng: np.random.Generator) -> tuple[bytes, str]:
        """(image bytes, caption) of one raw sample; BadSample when either is missing or unusable."""
        image = self.members.image_ext(members)
        if image is None:
            raise BadSample("missing_image", f"no member with extension {'/'.join(self.members.image_exts)}")
        return members[image], pick_caption(self.members.caption(members), rng)
