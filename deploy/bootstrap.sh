#!/usr/bin/env bash
# Bootstrap a bare-metal jigsaw cluster: one CA, one certificate and one config per node,
# written under OUT/<node>/ ready to copy to /etc/jigsaw on that node (plus an admin
# certificate for the operator CLI).
#
#   deploy/bootstrap.sh OUT VOTERS node-1=10.0.0.1:7400 node-2=10.0.0.2:7400 ...
#
# VOTERS: how many of the listed nodes (the first ones) are coordinator-eligible (3 or 5).
# Every node listens on 0.0.0.0:<port> and advertises the listed address; GPUs via NVML
# (edit `gpu = ...` to use the simulator). The inference API listens on 0.0.0.0:$HTTP_PORT
# (default 8000). Needs the `jigsaw` binary on PATH (or $JIGSAW).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
out=$1; voters=$2; shift 2
jigsaw=${JIGSAW:-jigsaw}
case $voters in (''|*[!0-9]*) echo "VOTERS must be a number, got '$voters'" >&2; exit 2;; esac
if [ "$voters" -lt 1 ] || [ "$voters" -gt $# ]; then
  echo "VOTERS must be between 1 and the number of nodes ($#)" >&2; exit 2
fi
names=(); addrs=()
for spec in "$@"; do
  name=${spec%%=*}; addr=${spec#*=}
  if [ "$name" = "$spec" ] || [ -z "$name" ] || [ -z "$addr" ]; then
    echo "node '$spec' must be NAME=HOST:PORT" >&2; exit 2
  fi
  names+=("$name"); addrs+=("$addr")
done
ca="$out/ca"
"$jigsaw" ca init --dir "$ca" --cluster "${CLUSTER:-jigsaw}"
"$jigsaw" ca issue --admin --dir "$ca" >/dev/null
voter_list=$(printf '"%s", ' "${names[@]:0:$voters}"); voter_list=${voter_list%, }
for i in "${!names[@]}"; do
  n=${names[$i]}; a=${addrs[$i]}; port=${a##*:}
  "$jigsaw" ca issue "$n" --dir "$ca" >/dev/null
  mkdir -p "$out/$n/ca"
  cp "$ca/ca.pem" "$ca/$n.pem" "$ca/$n.key" "$out/$n/ca/"
  peers=""
  for j in "${!names[@]}"; do
    [ "$j" = "$i" ] || peers+="\"${names[$j]}@${addrs[$j]}\", "
  done
  peers=${peers%, }
  eligible=false; [ "$i" -lt "$voters" ] && eligible=true
  cat > "$out/$n/jigsaw.toml" <<CONF
# Written by deploy/bootstrap.sh for $n.
[node]
id = "$n"
listen = "0.0.0.0:$port"
advertise = "$a"
peers = [$peers]
coordinator_eligible = $eligible
voters = [$voter_list]
data_dir = "/var/lib/jigsaw"
tls = { ca = "/etc/jigsaw/ca/ca.pem", cert = "/etc/jigsaw/ca/$n.pem", key = "/etc/jigsaw/ca/$n.key" }
gpu = { backend = "nvml" }
serve = { http = "0.0.0.0:${HTTP_PORT:-8000}", grpc = "0.0.0.0:${GRPC_PORT:-8001}" }   # KServe v2 inference API (HTTP and gRPC); executor cuda
CONF
  if ! "$jigsaw" --config "$out/$n/jigsaw.toml" config check >/dev/null; then
    echo "generated config for $n is invalid" >&2; exit 1
  fi
done
# cluster.json lets the operator CLI reach the cluster: jigsaw status --dir "$out".
{
  echo '{ "local": false, "ca_dir": "'"$(cd "$ca" && pwd)"'", "nodes": ['
  for i in "${!names[@]}"; do
    sep=","; [ "$i" -eq $(( ${#names[@]} - 1 )) ] && sep=""
    echo '  { "name": "'"${names[$i]}"'", "addr": "'"${addrs[$i]}"'", "eligible": '"$([ "$i" -lt "$voters" ] && echo true || echo false)"', "config": "'"$out/${names[$i]}/jigsaw.toml"'", "log": "", "pid": 0, "http": "http://'"${addrs[$i]%:*}:${HTTP_PORT:-8000}"'", "grpc": "'"${addrs[$i]%:*}:${GRPC_PORT:-8001}"'" }'"$sep"
  done
  echo '] }'
} > "$out/cluster.json"
echo "wrote $out/<node>/{jigsaw.toml,ca/} for ${names[*]}; admin certificate in $ca/admin.{pem,key}"
echo "operator CLI: jigsaw status --dir $out   |   jigsaw app register APP.toml --profiles P.csv --rps R --dir $out"
echo "load:         jigsaw load --app NAME --rps R --duration 30s --dir $out"
