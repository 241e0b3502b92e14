#!/usr/bin/env bash
# A local single-node Apache Cassandra 5 (the CQL twin of ScyllaDB) for tests.
#
#   deploy/local/cassandra.sh start   fetch jars (Maven, cached in ~/.m2), write a loopback config,
#                                     start, wait until a CQL login as cassandra succeeds
#   deploy/local/cassandra.sh stop    stop the server this script started (by its pid)
#   deploy/local/cassandra.sh status  say whether it runs
#   deploy/local/cassandra.sh url     print the journal URL prefix (scylla://127.0.0.1:PORT)
#
# Settings: TESSERA_CASSANDRA_DIR (default ~/.cache/tessera/cassandra),
# TESSERA_CASSANDRA_PORT (CQL, default 9042), TESSERA_CASSANDRA_DATA (data
# directory, default DIR/data-PORT), TESSERA_CASSANDRA_HEAP (default 2G),
# TESSERA_CASSANDRA_TLS=1 (clients must use TLS; a self-signed certificate for
# 127.0.0.1 is made with keytool, its PEM at DIR/tls-PORT/ca.pem).
set -euo pipefail

VERSION=5.0.8
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${TESSERA_CASSANDRA_DIR:-$HOME/.cache/tessera/cassandra}"
PORT="${TESSERA_CASSANDRA_PORT:-9042}"
DATA="${TESSERA_CASSANDRA_DATA:-$DIR/data-$PORT}"
HEAP="${TESSERA_CASSANDRA_HEAP:-2G}"
LIB="$DIR/lib-$VERSION"
PIDFILE="$DIR/cassandra-$PORT.pid"
LOG="$DIR/cassandra-$PORT.log"

die() { echo "cassandra.sh: $*" >&2; exit 1; }
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Logs in as cassandra/cassandra over the CQL native protocol (v4, SASL
# PLAIN; TLS when the server wants it). The port opens before the default
# superuser exists on a fresh data directory, so "answers CQL" means this.
cql_login_ok() {
  command -v python3 >/dev/null || { port_open "$PORT"; return; }
  python3 - "$PORT" "${TESSERA_CASSANDRA_TLS:-0}" <<'PY' 2>/dev/null
import socket, ssl, struct, sys
port, tls = int(sys.argv[1]), sys.argv[2] == "1"
s = socket.create_connection(("127.0.0.1", port), timeout=5)
if tls:
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(s)
def frame(op, body):
    s.sendall(struct.pack(">BBhBi", 4, 0, 0, op, len(body)) + body)
    head = b""
    while len(head) < 9: head += s.recv(9 - len(head)) or sys.exit(1)
    n = struct.unpack(">i", head[5:9])[0]; rest = b""
    while len(rest) < n: rest += s.recv(n - len(rest)) or sys.exit(1)
    return head[4]
def string(x): return struct.pack(">H", len(x)) + x
op = frame(0x01, struct.pack(">H", 1) + string(b"CQL_VERSION") + string(b"3.0.0"))
if op == 0x03:  # AUTHENTICATE
    token = b"\0cassandra\0cassandra"
    op = frame(0x0F, struct.pack(">i", len(token)) + token)
    sys.exit(0 if op == 0x10 else 1)  # AUTH_SUCCESS
sys.exit(0 if op == 0x02 else 1)  # READY (no authenticator)
PY
}

install() {
  [ -f "$LIB/cassandra-all-$VERSION.jar" ] && return 0
  command -v java >/dev/null || die "java (17) is needed: apt-get install openjdk-17-jre-headless"
  command -v mvn >/dev/null || die "maven is needed to fetch Cassandra's jars: apt-get install maven"
  mkdir -p "$LIB"
  echo "cassandra.sh: fetching Cassandra $VERSION jars from Maven Central into $LIB" >&2
  mvn -q -B -f "$HERE/cassandra/pom.xml" dependency:copy-dependencies -Dlib.dir="$LIB" -Dcassandra.version="$VERSION" >&2 \
    || die "maven could not fetch org.apache.cassandra:cassandra-all:$VERSION"
}

write_tls() {
  local tls="$DIR/tls-$PORT"
  mkdir -p "$tls"
  if [ ! -f "$tls/keystore.jks" ]; then
    keytool -genkeypair -noprompt -alias node -keyalg RSA -keysize 2048 -validity 3650 \
      -dname "CN=127.0.0.1" -ext "SAN=ip:127.0.0.1,dns:localhost" \
      -keystore "$tls/keystore.jks" -storepass tessera-test -keypass tessera-test >&2
    keytool -exportcert -rfc -alias node -keystore "$tls/keystore.jks" -storepass tessera-test -file "$tls/ca.pem" >&2
  fi
  cat <<YAML
client_encryption_options:
  enabled: true
  optional: false
  keystore: $tls/keystore.jks
  keystore_password: tessera-test
  require_client_auth: false
YAML
}

write_config() {
  local conf="$DIR/conf-$PORT"
  mkdir -p "$conf" "$DATA"
  # Ports next to the CQL port so several servers can coexist.
  local storage=$((PORT + 10000))
  cat >"$conf/cassandra.yaml" <<YAML
cluster_name: tessera-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $PORT
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
data_file_directories: [$DATA/data]
commitlog_directory: $DATA/commitlog
hints_directory: $DATA/hints
saved_caches_directory: $DATA/saved_caches
cdc_raw_directory: $DATA/cdc_raw
auto_snapshot: false
memtable_heap_space: 128MiB
# Every test keyspace prepares its own statements; the default cache
# (max(10 MiB, heap/256)) evicts them under a full test run.
prepared_statements_cache_size: 64MiB
disk_access_mode: standard
concurrent_compactors: 1
cdc_enabled: false
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
roles_validity: 0ms
permissions_validity: 0ms
credentials_validity: 0ms
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 1024KiB
unlogged_batch_across_partitions_warn_threshold: 100
write_request_timeout: 5000ms
cas_contention_timeout: 5000ms
YAML
  if [ "${TESSERA_CASSANDRA_TLS:-0}" = 1 ]; then write_tls >>"$conf/cassandra.yaml"; fi
  cat >"$conf/logback.xml" <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$DIR/cassandra-$PORT.server.log</file>
    <encoder><pattern>%d %-5level [%thread] %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra.service.CassandraDaemon" level="INFO"/>
</configuration>
XML
  echo "$conf"
}

case "${1:-}" in
  start)
    install
    if running; then echo "cassandra.sh: already running (pid $(cat "$PIDFILE")) on port $PORT" >&2; exit 0; fi
    port_open "$PORT" && die "port $PORT is taken by another process; set TESSERA_CASSANDRA_PORT"
    grep -q "$(hostname)" /etc/hosts 2>/dev/null || echo "127.0.0.1 $(hostname)" >>/etc/hosts || true
    conf="$(write_config)"
    jamm="$(ls "$LIB"/jamm-*.jar | head -1)"
    opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref java.base/jdk.internal.reflect
           java.base/jdk.internal.math java.base/jdk.internal.module java.base/jdk.internal.util.jar java.base/sun.nio.ch
           java.base/java.io java.base/java.lang.reflect java.base/java.lang java.base/java.util java.base/java.nio
           jdk.management/com.sun.management.internal java.base/java.util.concurrent java.base/java.util.concurrent.atomic
           java.base/java.net java.base/sun.nio.fs)
    exports=(java.base/jdk.internal.misc java.base/java.lang.ref jdk.unsupported/sun.misc java.rmi/sun.rmi.registry
             java.rmi/sun.rmi.server java.sql/java.sql java.management/com.sun.jmx.remote.security
             java.management.rmi/com.sun.jmx.remote.internal.rmi java.base/jdk.internal.ref java.base/sun.nio.ch)
    args=()
    for o in "${opens[@]}"; do args+=("--add-opens" "$o=ALL-UNNAMED"); done
    for e in "${exports[@]}"; do args+=("--add-exports" "$e=ALL-UNNAMED"); done
    mkdir -p "$DIR/tmp"
    nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+ExitOnOutOfMemoryError -XX:+UseG1GC -Xss512k \
      "${args[@]}" -javaagent:"$jamm" \
      -Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true \
      -Dcassandra-foreground=yes -Dcassandra.config="file://$conf/cassandra.yaml" \
      -Dcassandra.storagedir="$DATA" -Dcassandra.logdir="$DIR" -Dlogback.configurationFile="$conf/logback.xml" \
      -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 -Dcassandra.unsafesystem=true \
      -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.shutdown_announce_in_ms=0 -Dcassandra.libjemalloc=- \
      -Dchronicle.analytics.disable=true -Djna.tmpdir="$DIR/tmp" -Djava.io.tmpdir="$DIR/tmp" \
      -Dcassandra.jmx.local.port=$((PORT + 7000)) \
      -cp "$conf:$LIB/*" org.apache.cassandra.service.CassandraDaemon >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 180); do
      running || { tail -30 "$LOG" >&2; die "Cassandra exited during start-up; log above ($LOG)"; }
      if port_open "$PORT" && cql_login_ok; then echo "cassandra.sh: Cassandra $VERSION answers CQL (login as cassandra) on 127.0.0.1:$PORT" >&2; exit 0; fi
      sleep 1
    done
    tail -30 "$LOG" >&2
    die "Cassandra did not accept a CQL login on port $PORT within 180 s"
    ;;
  stop)
    if running; then
      pid="$(cat "$PIDFILE")"; kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$PIDFILE"; echo "cassandra.sh: stopped" >&2
    else
      echo "cassandra.sh: not running" >&2
    fi
    ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  url) echo "scylla://127.0.0.1:$PORT" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
