#!/bin/sh
# make run: sockmesh on the shipped services.d/, scoped to its own cgroup
# (sockmesh-demo) so the rest of the host is untouched, with the demo
# backends the example services point at. Ctrl-C stops it; the datapath
# stays pinned until `./sockmesh down`.
set -eu
cd "$(dirname "$0")/.."
bin=./sockmesh
tmp=$(mktemp -d /tmp/sockmesh-demo.XXXXXX)
ready=$tmp/ready

$bin demo-backends ./services.d &
backends=$!
$bin run --services ./services.d --cgroup sockmesh-demo --ready-file "$ready" &
daemon=$!
trap 'kill -TERM $daemon $backends 2>/dev/null || true; wait $daemon 2>/dev/null || true; rm -rf "$tmp"' EXIT INT TERM

i=0
until [ -e "$ready" ]; do
	kill -0 $daemon 2>/dev/null || { echo "sockmesh run exited; see its log above" >&2; exit 1; }
	i=$((i + 1))
	[ $i -lt 300 ] || { echo "sockmesh not ready after 30s" >&2; exit 1; }
	sleep 0.1
done

echo
echo "== sockmesh is serving ./services.d. Four requests to hello.mesh.internal:"
for _ in 1 2 3 4; do
	echo "\$ $bin exec -- curl http://hello.mesh.internal/"
	$bin exec -- curl -sS --max-time 3 http://hello.mesh.internal/
done
cat <<MSG

== Try it yourself, from another shell:
     sudo $bin exec -- curl http://hello.mesh.internal/
     sudo $bin status
   Edit or add files in ./services.d: changes apply as you save.
   Ctrl-C stops the daemon (connections to VIPs keep working);
   sudo $bin down then removes programs, pins, routes and the cgroup.
MSG
wait $daemon
