#!/usr/bin/env bash
# Peak RSS of the real docker-mirror binary as blob sizes grow.
#
# Builds docker-mirror and the two helpers of bench/cmd, starts an upstream
# registry (bench/cmd/upstream: distribution, filesystem storage, seeded
# with one blob of each size) and the proxy as separate processes on
# 127.0.0.1, then for each size pulls the blob through the proxy cold (the
# first fetch, COLD_CLIENTS clients at once sharing one upstream download)
# and warm (from the store, WARM_CLIENTS clients at once), every client
# reading and verifying every byte. After each phase it reads the proxy's
# peak RSS for that phase (VmHWM, reset before the phase through
# /proc/PID/clear_refs) and for its whole life, and prints a table.
#
# Usage: bench/rss.sh            (see docs/performance.md)
# Environment: SIZES (default 64MiB,256MiB,1GiB), COLD_CLIENTS (4),
# WARM_CLIENTS (8), RATE_MIBPS (upstream pace per response, 256),
# LATENCY (per upstream request, 20ms), KEEP=1 keeps the work directory,
# DIRECT=1 also pulls each blob straight from the upstream first (the
# cold phase's reference), RANGE=1 also GETs the middle half of each
# warm blob with a Range request (curl).
set -euo pipefail

SIZES=${SIZES:-64MiB,256MiB,1GiB}
COLD_CLIENTS=${COLD_CLIENTS:-4}
WARM_CLIENTS=${WARM_CLIENTS:-8}
RATE_MIBPS=${RATE_MIBPS:-256}
LATENCY=${LATENCY:-20ms}

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/docker-mirror-rss.XXXXXX")
pids=()

cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ "${KEEP:-}" == 1 ]]; then
		echo "work directory kept: $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

die() {
	echo "rss.sh: $*" >&2
	for f in "$work"/*.log; do
		[[ -f "$f" ]] && { echo "--- $f (tail)" >&2; tail -n 20 "$f" >&2; }
	done
	exit 1
}

echo "building in $work ..." >&2
(cd "$root" && go build -o "$work/docker-mirror" ./cmd/docker-mirror \
	&& go build -o "$work/upstream" ./bench/cmd/upstream \
	&& go build -o "$work/pull" ./bench/cmd/pull) || die "build failed"

echo "seeding the upstream ($SIZES) ..." >&2
"$work/upstream" --listen 127.0.0.1:0 --dir "$work/upstream-data" --sizes "$SIZES" \
	--rate-mibps "$RATE_MIBPS" --latency "$LATENCY" --ready "$work/upstream.json" \
	2>"$work/upstream.log" &
pids+=($!)
up_pid=$!
for _ in $(seq 1 1200); do
	[[ -f "$work/upstream.json" ]] && break
	kill -0 "$up_pid" 2>/dev/null || die "upstream exited"
	sleep 0.1
done
[[ -f "$work/upstream.json" ]] || die "upstream not ready after 120s"
cat "$work/upstream.log" >&2

# The description is tiny JSON; pick fields without jq.
up_url=$(grep -o '"url": *"[^"]*"' "$work/upstream.json" | sed 's/.*"\(http[^"]*\)"/\1/')
repo=$(grep -o '"repo": *"[^"]*"' "$work/upstream.json" | sed 's/.*: *"\([^"]*\)"/\1/')
mapfile -t blob_sizes < <(grep -o '"size": *[0-9]*' "$work/upstream.json" | grep -o '[0-9]*$')
mapfile -t blob_digests < <(grep -o '"digest": *"[^"]*"' "$work/upstream.json" | sed 's/.*: *"\([^"]*\)"/\1/')

"$work/docker-mirror" serve --listen 127.0.0.1:0 --data "$work/mirror-data" \
	--upstream "$up_url" --log-level info 2>"$work/proxy.log" &
pids+=($!)
proxy_pid=$!
proxy=""
for _ in $(seq 1 100); do
	proxy=$(grep -o 'listen=127\.0\.0\.1:[0-9]*' "$work/proxy.log" | head -n1 | cut -d= -f2 || true)
	[[ -n "$proxy" ]] && break
	kill -0 "$proxy_pid" 2>/dev/null || die "docker-mirror exited"
	sleep 0.1
done
[[ -n "$proxy" ]] || die "docker-mirror did not start"

kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$proxy_pid/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
can_reset=1
reset_peak() {
	if [[ $can_reset == 1 ]] && ! echo 5 >"/proc/$proxy_pid/clear_refs" 2>/dev/null; then
		can_reset=0
		echo "rss.sh: cannot reset VmHWM (clear_refs); phase peaks are lifetime peaks" >&2
	fi
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

idle_rss=$(kib VmRSS)
lifetime=$(kib VmHWM)
printf '%s\n' "proxy $proxy (pid $proxy_pid), upstream $up_url, ${RATE_MIBPS} MiB/s per response, ${LATENCY} latency" >&2
printf 'proxy RSS at start: %s MiB\n\n' "$(mib "$idle_rss")"
printf '%-10s | %-7s | %7s | %10s | %15s | %13s | %16s\n' \
	"blob" "phase" "clients" "MB/s" "phase peak MiB" "RSS after MiB" "lifetime peak MiB"
printf '%s\n' "-----------|---------|---------|------------|-----------------|---------------|------------------"
for i in "${!blob_sizes[@]}"; do
	size=${blob_sizes[$i]}
	dgst=${blob_digests[$i]}
	url="http://$proxy/v2/$repo/blobs/$dgst"
	label=$(awk -v s="$size" 'BEGIN { if (s >= 2^30) printf "%gGiB", s/2^30; else printf "%gMiB", s/2^20 }')
	if [[ "${DIRECT:-}" == 1 ]]; then
		direct=$("$work/pull" --url "${up_url}/v2/$repo/blobs/$dgst" --digest "$dgst" --clients "$COLD_CLIENTS") || die "direct pull of $label failed"
		printf '%-10s | %-7s | %7s | %10s |\n' "$label" "direct" "$COLD_CLIENTS" "$(field MBps "$direct")"
	fi
	for phase in cold warm; do
		clients=$COLD_CLIENTS
		[[ $phase == warm ]] && clients=$WARM_CLIENTS
		reset_peak
		out=$("$work/pull" --url "$url" --digest "$dgst" --clients "$clients") || die "$phase pull of $label failed"
		[[ $phase == cold ]] && { "$work/pull" --url "$url" --wait-hit --timeout 5m || die "$label was not stored"; }
		caches=$(field cache "$out")
		if [[ $phase == warm && $caches == *miss* ]]; then die "warm pull of $label was not served from the store: $out"; fi
		peak=$(kib VmHWM)
		((peak > lifetime)) && lifetime=$peak
		printf '%-10s | %-7s | %7s | %10s | %15s | %13s | %16s\n' "$label" "$phase" "$clients" \
			"$(field MBps "$out")" "$(mib "$peak")" "$(mib "$(kib VmRSS)")" "$(mib "$lifetime")"
	done
	if [[ "${RANGE:-}" == 1 ]]; then
		reset_peak
		from=$((size / 4)) to=$((size / 4 + size / 2 - 1))
		out=$(curl -sS -o /dev/null -H "Range: bytes=$from-$to" -w '%{http_code} %{size_download} %{time_total}' "$url") || die "range GET of $label failed"
		read -r code got secs <<<"$out"
		[[ $code == 206 && $got == $((to - from + 1)) ]] || die "range GET of $label: status $code, $got bytes"
		printf '%-10s | %-7s | %7s | %10s | %15s | %13s |\n' "$label" "range" 1 \
			"$(awk -v b="$got" -v s="$secs" 'BEGIN {printf "%.1f", b/1e6/s}')" "$(mib "$(kib VmHWM)")" "$(mib "$(kib VmRSS)")"
	fi
done
echo
if [[ $can_reset == 1 ]]; then
	echo "phase peak: VmHWM, reset before the phase; lifetime peak: the largest so far."
else
	echo "VmHWM could not be reset: every peak is the peak since the proxy started."
fi
