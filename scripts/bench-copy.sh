#!/usr/bin/env bash
# Benchmarks the state engine against `cp -a` and `rsync -aHAXS --numeric-ids` with hyperfine.
#
#   scripts/bench-copy.sh [WORKDIR]      (as root; WORKDIR defaults to /var/tmp/nixos-nspawn-bench)
#
# Environment: SCALE (default 1.0) scales the number of small files and the size of the large
# ones; LARGE_MB (default 256) the size of each of the 4 large files at SCALE 1; RUNS (default 5); COLD=1 drops the page cache before every run (affects the whole
# machine); KEEP=1 keeps the trees.
#
# Two synthetic rootfs trees are built once:
#   small/  ~40k small files (0-9 KiB) in nested dirs, 2k symlinks (dangling absolute /nix/store
#           ones, relative, /etc/static), 1k hard links, uids 100000+ and 2^31, setuid files,
#           user.* xattrs, an access+default ACL, a fifo, a socket, a device node
#   large/  4 large random files, a 1 GiB sparse file with 8 MiB of data, a few small files
# and each is copied, round-robin, by:
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
RUNS=${RUNS:-5}
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
  mb=$(python3 -c "print(max(8, int(${LARGE_MB:-256} * $SCALE)))")
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

# Outputs of an earlier run (maybe still being deleted) are moved out of the way.
if [ -e "$W/trash" ]; then mv "$W/trash" "$W/trash.old.$$"; fi
mkdir -p "$W/trash"
# Before every run (not timed): the previous output goes away and its writeback is flushed.
# Many small synced files are slow to delete on a filesystem mounted with `discard`, so the
# small tree's outputs are moved aside and deleted at the end; large files delete quickly.
prep_small="if [ -e $W/out ]; then mv $W/out $W/trash/out.\$\$.\$RANDOM; fi; rm -f $W/.out.journal; sync"
prep_large="rm -rf $W/out $W/.out.journal; sync"
if [ "${COLD:-0}" = 1 ]; then
  prep_small="$prep_small; echo 3 > /proc/sys/vm/drop_caches"
  prep_large="$prep_large; echo 3 > /proc/sys/vm/drop_caches"
fi

# Round-robin: run k of every command, then run k+1 of every command, so that drift in a
# shared machine's load hits every command alike. hyperfine times each run.
names=("cp -a" "cp -a + sync" "rsync -aHAXS" "engine" "migrate none" "migrate full")
rm -rf "$W/res"; mkdir -p "$W/res"
for t in small large; do
  S=$W/$t
  D=$W/out
  if [ "$t" = small ]; then prep=$prep_small; else prep=$prep_large; fi
  cmds=("cp -a $S $D"
        "cp -a $S $D && sync -f $D"
        "rsync -aHAXS --numeric-ids $S/ $D/"
        "COPY_TREE_QUIET=1 $BIN $S $D --raw"
        "COPY_TREE_QUIET=1 $BIN $S $D --verify=none"
        "COPY_TREE_QUIET=1 $BIN $S $D --verify=full")
  # Warm-up: the source into the page cache.
  cp -a "$S" "$D"; eval "$prep"
  for r in $(seq "$RUNS"); do
    for i in "${!cmds[@]}"; do
      hyperfine --runs 1 --prepare "$prep" --export-json "$W/res/$t-$i-$r.json" \
        -n "${names[$i]}" "${cmds[$i]}" >/dev/null
      printf '%s run %s: %-14s %6.2f s\n' "$t" "$r" "${names[$i]}" \
        "$(python3 -c "import json;print(json.load(open('$W/res/$t-$i-$r.json'))['results'][0]['times'][0])")"
    done
  done
done

# Correctness of the last copy, by an independent tool.
$BIN "$W/small" "$W/check" --verify=full >/dev/null
diffs=$(rsync -naiHAXSc --numeric-ids "$W/small/" "$W/check/" | wc -l)
echo "rsync -c sees $diffs differences between small/ and our copy"
mv "$W/check" "$W/trash/check.$$"; rm -f "$W/.check.journal"

python3 - "$W" <<'EOF'
import glob, json, statistics, sys
w = sys.argv[1]
for t in ("small", "large"):
    times = {}
    for f in sorted(glob.glob(f"{w}/res/{t}-*.json")):
        r = json.load(open(f))["results"][0]
        times.setdefault(r["command"], []).extend(r["times"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== {t} (median of {len(next(iter(times.values())))} runs, seconds; min-max)")
    for k, v in med.items():
        print(f"  {k:14s} {v:7.2f}   ({min(times[k]):.2f}-{max(times[k]):.2f})")
    best = {k: min(v) for k, v in times.items()}
    print("  ratios                         median   best-of-runs")
    for a, b in (("engine", "cp -a"), ("migrate none", "cp -a"), ("migrate none", "cp -a + sync"),
                 ("migrate full", "cp -a"), ("migrate full", "cp -a + sync"), ("rsync -aHAXS", "cp -a")):
        print(f"  {a + ' / ' + b:28s} = {med[a] / med[b]:6.2f}   {best[a] / best[b]:6.2f}")
EOF

# Deleting synced data is slow on a filesystem mounted with `discard`: do it in the background.
if [ "${KEEP:-0}" != 1 ]; then
  echo "deleting the outputs in $W/trash in the background"
  (nice ionice -c3 rm -rf "$W"/trash* &)
fi
