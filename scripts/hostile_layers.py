#!/usr/bin/env python3
"""Writes the hostile layers BENCHMARKS.md times `dist apply` on.

  chain HOPS OUT   a file under a 2,000-level name, then HOPS symlinks, each
                   to the last one's chain, each with a file 2,000 levels
                   under it: a tree HOPS x 2,000 levels deep (8 hops: 100 KB)
  wide N OUT       the 39-hop chain, then N directories under it, each in a
                   parent of its own (N = 2,000: 1.4 MB)
  loops N OUT      one directory, 39 nested symlinks whose targets walk
                   `a/..` back and forth, then N directories through them
  names N OUT      N files, each under a 2,000-level chain of its own
  reopen N OUT     a 2,047-level directory D with D/s -> ., q -> D, then N
                   files under q/s/s/.../s (39 of them): each lookup reopens
                   D 40 times, and more while its parents are made
  churn N OUT      l1..l10 (l10 walks 16,011 names), then N times a file
                   under l10 and a file written twice (a replacement, which
                   forgets every remembered resolution)
"""
import io
import sys
import tarfile

CHAIN = "/".join(["a"] * 2000)


def main():
    kind, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tar = tarfile.open(out, "w", format=tarfile.PAX_FORMAT)

    def add(name, kind=tarfile.REGTYPE, target=""):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        if kind == tarfile.REGTYPE:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        else:
            tar.addfile(info)

    def chain(hops):
        add("d0/" + CHAIN + "/f")
        prev = "d0"
        for k in range(1, hops + 1):
            add(f"s{k}", tarfile.SYMTYPE, prev + "/" + CHAIN)
            add(f"s{k}/" + CHAIN + "/f")
            prev = f"s{k}"
        return prev

    def loop_chain(links, ups):
        # l1 -> a/../a/..., each next one through the last: every lookup
        # under the last walks them all.
        add("a/", tarfile.DIRTYPE)
        add("l1", tarfile.SYMTYPE, "a" + "/../a" * ups)
        for k in range(2, links + 1):
            add(f"l{k}", tarfile.SYMTYPE, f"l{k - 1}" + "/../a" * ups)
        return f"l{links}"

    if kind == "chain":
        chain(count)
    elif kind == "wide":
        last = chain(39)
        for i in range(count):
            add(f"{last}/x{i}/", tarfile.DIRTYPE)
    elif kind == "loops":
        last = loop_chain(39, 815)
        for i in range(count):
            add(f"{last}/x{i}/", tarfile.DIRTYPE)
    elif kind == "names":
        for i in range(count):
            add(f"p{i}/{CHAIN}/f")
    elif kind == "reopen":
        deep = "/".join(["a"] * 2047)
        add(deep + "/s", tarfile.SYMTYPE, ".")
        add("q", tarfile.SYMTYPE, deep)
        for i in range(count):
            add("q/" + "s/" * 39 + f"y{i}/f")
    elif kind == "churn":
        last = loop_chain(10, 800)
        for i in range(count):
            add(f"{last}/x{i}/f")
            add("junk")
            add("junk")
    else:
        sys.exit(__doc__)
    tar.close()


if __name__ == "__main__":
    main()
