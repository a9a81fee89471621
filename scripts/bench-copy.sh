#!/usr/bin/env bash
# Benchmarks the state engine against `cp -a` and `rsync -aHAXS --numeric-ids` with hyperfine.
#
#   scripts/bench-copy.sh [WORKDIR]      (as root; WORKDIR defaults to /var/tmp/nixos-nspawn-bench)
#
# Environment: SCALE (default 1.0) scales the number of small files and the size of the large
# ones; RUNS (default 3); COLD=1 drops the page cache before every run (affects the whole
# machine); KEEP=1 keeps the trees.
#
# Two synthetic rootfs trees are built once:
#   small/  ~40k small files (0-9 KiB) in nested dirs, 2k symlinks (dangling absolute /nix/store
#           ones, relative, /etc/static), 1k hard links, uids 100000+ and 2^31, setuid files,
#           user.* xattrs, an access+default ACL, a fifo, a socket, a device node
#   large/  4 large random files, a 1 GiB sparse file with 8 MiB of data, a few small files
# and each is copied by:
#   cp -a | cp -a + sync -f | rsync -aHAXS --numeric-ids
#   engine (copy engine only: examples/copy_tree --raw)
#   migrate none (migrate_state: staging dir, journal, syncfs, rename; no verification)
#   migrate full (the same plus full verification: metadata + BLAKE3 of all contents)
# The destination is moved aside and the filesystem synced before every run (not timed), so
# no run pays for the previous one's writeback. Ratios are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-copy.sh: run as root (owners, devices, trusted xattrs)" >&2; exit 1; }
for t in hyperfine rsync setfacl python3; do
  command -v "$t" >/dev/null || { echo "bench-copy.sh: $t is missing" >&2; exit 1; }
done
W=${1:-/var/tmp/nixos-nspawn-bench}
SCALE=${SCALE:-1.0}
RUNS=${RUNS:-3}
mkdir -p "$W"
W=$(cd "$W" && pwd)

cargo build --release --example copy_tree -q
BIN=$PWD/target/release/examples/copy_tree

build_small() {
  local root=$1
  python3 - "$root" "$SCALE" <<'EOF'
import os, sys, random, socket
root, scale = sys.argv[1], float(sys.argv[2])
random.seed(42)
ndirs = max(4, int(400 * scale))
nfiles = 100
blob = os.urandom(10000)
files = []
for d in range(ndirs):
    p = os.path.join(root, f"usr{d % 4}", f"share{d % 20}", f"pkg{d}")
    os.makedirs(p, exist_ok=True)
    for f in range(nfiles):
        n = random.randint(0, 9000)
        fp = os.path.join(p, f"file{f}.txt")
        with open(fp, "wb") as fh:
            fh.write(blob[(f * 7) % 1000:][:n])
        files.append(fp)
for i, fp in enumerate(files[: max(1, len(files) // 20)]):
    d = os.path.dirname(fp)
    kind = i % 3
    tgt = ["/nix/store/%032d-dangling/bin/x" % i, "../" + os.path.basename(d) + "/file0.txt", "/etc/static/x%d" % i][kind]
    os.symlink(tgt, fp + ".lnk")
for i, fp in enumerate(files[len(files) // 2 : len(files) // 2 + max(1, len(files) // 40)]):
    os.link(fp, fp + ".hard")
for i, fp in enumerate(files[::80]):
    os.chown(fp, 100000 + i, 100000 + i)
    os.setxattr(fp, "user.bench", b"x" * (i % 64 + 1))
os.chown(files[1], 2**31, 2**31)
os.chmod(files[2], 0o4755)
os.makedirs(os.path.join(root, "dev"), exist_ok=True)
os.mkfifo(os.path.join(root, "dev", "fifo"))
s = socket.socket(socket.AF_UNIX); s.bind(os.path.join(root, "dev", "sock")); s.close()
os.mknod(os.path.join(root, "dev", "null"), 0o666 | 0o020000, os.makedev(1, 3))
EOF
  setfacl -m u:1234:rx "$root/usr0"
  setfacl -d -m u:1234:rwx "$root/usr0"
}

build_large() {
  local root=$1
  mkdir -p "$root/var/lib/db" "$root/etc"
  local mb
  mb=$(python3 -c "print(max(8, int(256 * $SCALE)))")
  for i in 1 2 3 4; do
    head -c "${mb}M" /dev/urandom >"$root/var/lib/db/blob$i"
  done
  python3 - "$root/var/lib/sparse.img" <<'EOF'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    for i in range(8):
        f.seek(i * (128 << 20))
        f.write(os.urandom(1 << 20))
EOF
  echo "ID=nixos" >"$root/etc/os-release"
}

if [ ! -e "$W/.built-$SCALE" ]; then
  rm -rf "$W/small" "$W/large" "$W/.built-"*
  echo "building the synthetic trees in $W (SCALE=$SCALE)..."
  mkdir -p "$W/small" "$W/large"
  build_small "$W/small"
  build_large "$W/large"
  sync
  touch "$W/.built-$SCALE"
fi
for t in small large; do
  printf '%s: %s entries, %s apparent, %s allocated\n' "$t" \
    "$(find "$W/$t" | wc -l)" "$(du -sh --apparent-size "$W/$t" | cut -f1)" "$(du -sh "$W/$t" | cut -f1)"
done

mkdir -p "$W/trash"
prep="if [ -e $W/out ]; then mv $W/out $W/trash/out.\$\$.\$RANDOM; fi; rm -f $W/.out.journal; sync"
if [ "${COLD:-0}" = 1 ]; then prep="$prep; echo 3 > /proc/sys/vm/drop_caches"; fi

for t in small large; do
  S=$W/$t
  D=$W/out
  hyperfine --runs "$RUNS" --warmup 1 --prepare "$prep" --export-json "$W/$t.json" \
    -n "cp -a" "cp -a $S $D" \
    -n "cp -a + sync" "cp -a $S $D && sync -f $D" \
    -n "rsync -aHAXS" "rsync -aHAXS --numeric-ids $S/ $D/" \
    -n "engine" "COPY_TREE_QUIET=1 $BIN $S $D --raw" \
    -n "migrate none" "COPY_TREE_QUIET=1 $BIN $S $D --verify=none" \
    -n "migrate full" "COPY_TREE_QUIET=1 $BIN $S $D --verify=full"
done

# Correctness of the last copy, by an independent tool.
$BIN "$W/small" "$W/check" --verify=full >/dev/null
diffs=$(rsync -naiHAXSc --numeric-ids "$W/small/" "$W/check/" | wc -l)
echo "rsync -c sees $diffs differences between small/ and our copy"
mv "$W/check" "$W/trash/check.$$"; rm -f "$W/.check.journal"

python3 - "$W" <<'EOF'
import json, sys
w = sys.argv[1]
for t in ("small", "large"):
    r = {x["command"]: x for x in json.load(open(f"{w}/{t}.json"))["results"]}
    med = {k: v["median"] for k, v in r.items()}
    print(f"\n== {t} files (median of runs, seconds)")
    for k, v in med.items():
        print(f"  {k:14s} {v:7.2f}   ({min(r[k]['times']):.2f}-{max(r[k]['times']):.2f})")
    cp, cps = med["cp -a"], med["cp -a + sync"]
    print(f"  engine / cp -a               = {med['engine'] / cp:.2f}")
    print(f"  migrate none / cp -a         = {med['migrate none'] / cp:.2f}")
    print(f"  migrate none / cp -a + sync  = {med['migrate none'] / cps:.2f}")
    print(f"  migrate full / cp -a         = {med['migrate full'] / cp:.2f}")
    print(f"  migrate full / cp -a + sync  = {med['migrate full'] / cps:.2f}")
    print(f"  rsync / cp -a                = {med['rsync -aHAXS'] / cp:.2f}")
EOF

# Deleting synced data is slow on a filesystem mounted with `discard`: do it in the background.
if [ "${KEEP:-0}" != 1 ]; then
  (nice rm -rf "$W/trash" &)
fi
