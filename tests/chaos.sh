#!/bin/sh
# chaos.sh: the 2-minute chaos run (scripts/chaos): 4 local peers train with SPARTA + DiLoCo
# while a seeded schedule kills, stops and partitions them and kills one mid-checkpoint. It
# passes when every peer finishes, restarted peers contribute again within 10 s, every
# checkpoint reads, no outer step has two theta_g, and the final val loss is within 3% of the
# fault-free run's. Seed 1 with faults every 10-25 s brings every kind of fault within 2 minutes;
# the test also checks that each kind happened.
set -u
bin=${SPARTAN_BIN:-bin/spartan}
dir=$(mktemp -d "${TMPDIR:-/tmp}/spartan-chaos-XXXXXX")
trap 'rm -rf "$dir"' EXIT
out=$(python3 scripts/chaos --minutes 2 --gap 10,25 --seed 1 --out "$dir" --spartan "$bin" 2>&1)
rc=$?
echo "$out" | tail -12
line=$(echo "$out" | grep '^chaos: PASS\|^chaos: FAIL' | tail -1)
[ "$rc" = 0 ] && echo "$line" | grep -q '^chaos: PASS' || { echo "FAIL chaos: exit $rc"; exit 1; }
for k in kill stop partition ckpt; do
    echo "$line" | grep -q "[( ]$k [1-9]" || { echo "FAIL chaos: no $k fault ran"; exit 1; }
done
[ -s "$dir/faults.csv" ] && [ -s "$dir/loss.csv" ] || { echo "FAIL chaos: no faults.csv or loss.csv"; exit 1; }
echo "chaos: ok"
