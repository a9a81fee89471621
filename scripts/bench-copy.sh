#!/usr/bin/env bash
# Benchmarks the state engine against `cp -a` and `cp -a && sync`, on ext4, btrfs and XFS (each a
# loop device, so all three are measured alike), with hyperfine; peak memory with GNU time.
#
#   scripts/bench-copy.sh [WORKDIR]      (as root; WORKDIR defaults to /var/tmp/nixos-nspawn-bench)
#
# Environment: SCALE (default 1.0) scales the number of small files and the size of the large
# ones; LARGE_MB (default 256) the size of each of the 4 large files at SCALE 1; RUNS (default 5);
# FILESYSTEMS (default "ext4 btrfs xfs"); TREES (default "small large mixed"); COLD=1 drops the
# page cache before every run (affects the whole machine); KEEP=1 keeps the trees and images.
#
# Three synthetic rootfs trees are built once (on WORKDIR's filesystem), then copied (without
# reflinks) onto each test filesystem:
#   small/  ~40k small files (0-9 KiB) in nested dirs, 2k symlinks (dangling absolute /nix/store
#           ones, relative, /etc/static), 1k hard links, uids 100000+ and 2^31, setuid files,
#           user.* xattrs, an access+default ACL, a fifo, a socket, a device node
#   large/  4 large random files, a 1 GiB sparse file with 8 MiB of data, a few small files
#   mixed/  the tree of issue 12: 20,000 small files plus 3 random files of 300 MB (at SCALE 1)
# The load average before and after each tree's runs is printed with its results: the machine
# may be shared.
# On each filesystem, each tree is copied (source and copy on that filesystem; on btrfs the
# destination is a subvolume of its own, as systemd makes /var/lib/machines), round-robin, by:
#   cp -a            (coreutils >= 9 clones with FICLONE where it can, like the engine)
#   cp -a + sync     (cp -a && sync -f: the data on disk, as the engine guarantees)
#   migrate none     (migrate_state: staging dir, journal, syncfs, rename; no verification)
#   migrate full     (the same plus full verification: metadata, and contents by shared
#                     extents where source and copy share them, else BLAKE3 of both sides)
# The output is removed and the filesystem synced before every run (not timed). Ratios (median
# and best of the runs) and the peak RSS of one extra run of each command are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-copy.sh: run as root (owners, devices, trusted xattrs, loop devices)" >&2; exit 1; }
for t in hyperfine setfacl python3 mkfs.btrfs mkfs.xfs mkfs.ext4 losetup; do
  command -v "$t" >/dev/null || { echo "bench-copy.sh: $t is missing" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench-copy.sh: GNU time (/usr/bin/time, Debian package time) is missing" >&2; exit 1; }
W=${1:-/var/tmp/nixos-nspawn-bench}
SCALE=${SCALE:-1.0}
RUNS=${RUNS:-5}
FILESYSTEMS=${FILESYSTEMS:-ext4 btrfs xfs}
export TREES=${TREES:-small large mixed}
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

build_mixed() {
  local root=$1
  python3 - "$root" "$SCALE" <<'EOF'
import os, sys, random
root, scale = sys.argv[1], float(sys.argv[2])
random.seed(7)
blob = os.urandom(10000)
for d in range(max(2, int(200 * scale))):
    p = os.path.join(root, "var/lib/app", f"d{d:03}")
    os.makedirs(p, exist_ok=True)
    for f in range(100):
        with open(os.path.join(p, f"f{f}"), "wb") as fh:
            fh.write(blob[: random.randint(0, 9000)])
EOF
  mkdir -p "$root/var/lib/db"
  local mb
  mb=$(python3 -c "print(max(8, int(300 * $SCALE)))")
  for i in 1 2 3; do
    head -c "${mb}M" /dev/urandom >"$root/var/lib/db/blob$i"
  done
}

if [ ! -e "$W/.built-$SCALE" ]; then
  rm -rf "$W/small" "$W/large" "$W/mixed" "$W/.built-"*
  echo "building the synthetic trees in $W (SCALE=$SCALE)..."
  mkdir -p "$W/small" "$W/large" "$W/mixed"
  build_small "$W/small"
  build_large "$W/large"
  build_mixed "$W/mixed"
  sync
  touch "$W/.built-$SCALE"
fi
for t in $TREES; do
  printf '%s: %s entries, %s apparent, %s allocated\n' "$t" \
    "$(find "$W/$t" | wc -l)" "$(du -sh --apparent-size "$W/$t" | cut -f1)" "$(du -sh "$W/$t" | cut -f1)"
done

# One loop filesystem per kind, big enough for both trees and one copy of each.
need_mb=0
for t in $TREES; do need_mb=$(( need_mb + $(du -sm --apparent-size "$W/$t" | cut -f1) )); done
img_mb=$(( need_mb * 3 + 512 ))
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  if [ "${KEEP:-0}" != 1 ]; then rm -f "$W"/fs-*.img; fi
}
trap cleanup EXIT
for fs in $FILESYSTEMS; do
  M=$W/mnt-$fs
  mkdir -p "$M"
  if ! mountpoint -q "$M"; then
    rm -f "$W/fs-$fs.img"
    truncate -s "${img_mb}M" "$W/fs-$fs.img"
    case $fs in
      btrfs) mkfs.btrfs -q -f "$W/fs-$fs.img" ;;
      xfs) mkfs.xfs -q -f -m reflink=1 "$W/fs-$fs.img" ;;
      ext4) mkfs.ext4 -q -F "$W/fs-$fs.img" ;;
    esac
    mount -o loop "$W/fs-$fs.img" "$M"
    for t in $TREES; do cp -a --reflink=never "$W/$t" "$M/$t"; done
    if [ "$fs" = btrfs ]; then btrfs -q subvolume create "$M/machines"; else mkdir -p "$M/machines"; fi
    sync
  fi
  mounted+=("$M")
done

names=("cp -a" "cp -a + sync" "migrate none" "migrate full")
rm -rf "$W/res"; mkdir -p "$W/res"
for fs in $FILESYSTEMS; do
  M=$W/mnt-$fs
  for t in $TREES; do
    S=$M/$t
    cut -d' ' -f1-3 /proc/loadavg | tr -d '\n' >"$W/res/$fs-$t.load"
    D=$M/machines/out
    prep="rm -rf $D $M/machines/.out.journal; sync"
    if [ "${COLD:-0}" = 1 ]; then prep="$prep; echo 3 > /proc/sys/vm/drop_caches"; fi
    cmds=("cp -a $S $D"
          "cp -a $S $D && sync -f $D"
          "COPY_TREE_QUIET=1 $BIN $S $D --verify=none"
          "COPY_TREE_QUIET=1 $BIN $S $D --verify=full")
    # Warm-up: the source into the page cache.
    cp -a "$S" "$D"; eval "$prep"
    for r in $(seq "$RUNS"); do
      # Round-robin: drift in a shared machine's load hits every command alike.
      for i in "${!cmds[@]}"; do
        hyperfine --runs 1 --prepare "$prep" --export-json "$W/res/$fs-$t-$i-$r.json" \
          -n "${names[$i]}" "${cmds[$i]}" >/dev/null
        printf '%-5s %s run %s: %-14s %7.3f s\n' "$fs" "$t" "$r" "${names[$i]}" \
          "$(python3 -c "import json;print(json.load(open('$W/res/$fs-$t-$i-$r.json'))['results'][0]['times'][0])")"
      done
    done
    # Peak memory: one more run of each, under GNU time.
    for i in "${!cmds[@]}"; do
      eval "$prep"
      /usr/bin/time -v -o "$W/res/$fs-$t-$i.mem" sh -c "${cmds[$i]}" >/dev/null
    done
    # Memory flat in the number of files: the engine on a quarter of the small tree.
    if [ "$t" = small ]; then
      eval "$prep"
      /usr/bin/time -v -o "$W/res/$fs-quarter.mem" sh -c "COPY_TREE_QUIET=1 $BIN $S/usr0 $D --verify=full" >/dev/null
      printf '%s' "$(find "$S/usr0" | wc -l)" > "$W/res/$fs-quarter.count"
      printf '%s' "$(find "$S" | wc -l)" > "$W/res/$fs-small.count"
    fi
    eval "$prep"
    printf ' to %s' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$W/res/$fs-$t.load"
  done
done

# Correctness of a copy on each filesystem, by an independent tool.
for fs in $FILESYSTEMS; do
  M=$W/mnt-$fs
  for t in $TREES; do
    $BIN "$M/$t" "$M/machines/check" --verify=full
    echo "$fs: rsync -c sees $(rsync -naiHAXSc --numeric-ids "$M/$t/" "$M/machines/check/" | wc -l) differences between $t/ and our copy"
    rm -rf "$M/machines/check" "$M/machines"/.check*.journal
  done
done

python3 - "$W" "$FILESYSTEMS" <<'PY'
import glob, json, re, statistics, sys, os
w, fses = sys.argv[1], sys.argv[2].split()
names = ["cp -a", "cp -a + sync", "migrate none", "migrate full"]
def rss(path):
    try:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
        return int(m.group(1)) / 1024 if m else float("nan")
    except OSError:
        return float("nan")
print("\n(the machine is shared and loaded: compare ratios within one run, not across runs)")
for fs in fses:
    for t in os.environ.get("TREES", "small large mixed").split():
        times = {}
        for i, n in enumerate(names):
            for f in sorted(glob.glob(f"{w}/res/{fs}-{t}-{i}-*.json")):
                times.setdefault(n, []).extend(json.load(open(f))["results"][0]["times"])
        if not times:
            continue
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        try:
            load = open(f"{w}/res/{fs}-{t}.load").read().strip()
        except OSError:
            load = "?"
        print(f"\n== {fs} {t} ({len(times['cp -a'])} runs; load average {load}; milliseconds: median, best, worst; peak RSS)")
        for i, k in enumerate(names):
            print(f"  {k:14s} {med[k]*1e3:9.1f} {best[k]*1e3:9.1f} {max(times[k])*1e3:9.1f}   {rss(f'{w}/res/{fs}-{t}-{i}.mem'):7.1f} MB")
        print("  ratios                          median   best")
        for a, b in (("migrate full", "cp -a"), ("migrate full", "cp -a + sync"),
                     ("migrate none", "cp -a"), ("migrate none", "cp -a + sync")):
            r = lambda x, y: x / max(y, 1e-6)  # true ratios, even of millisecond clones
            print(f"  {a + ' / ' + b:30s} {r(med[a], med[b]):6.2f}  {r(best[a], best[b]):6.2f}")
    q = f"{w}/res/{fs}-quarter.mem"
    if os.path.exists(q):
        nq, nf = open(f"{w}/res/{fs}-quarter.count").read(), open(f"{w}/res/{fs}-small.count").read()
        print(f"  peak RSS of migrate full: {rss(q):.1f} MB for {nq} entries, {rss(f'{w}/res/{fs}-small-3.mem'):.1f} MB for {nf} entries")
PY
