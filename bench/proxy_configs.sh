# Sourced by bench/proxy.sh and bench/callgrind.sh, so that both measure the same setup: an nginx
# backend (`return 200 "ok\n"`), nginx as a keep-alive reverse proxy in front of it, and the
# Portico edge's config with one http_proxy route to it.
#
# write_nginx_confs writes $TMP/backend.conf, $TMP/nginx-proxy.conf and $TMP/portico.yaml, for
# BACKEND_PORT and NGINX_PORT; each nginx keeps its pid and error log in $TMP/backend/ or
# $TMP/nginx-proxy/ (created here), which is also the prefix to run it with (`nginx -p`).

write_nginx_confs() {
  mkdir -p "$TMP/backend" "$TMP/nginx-proxy"
  cat >"$TMP/backend.conf" <<EOF
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx closes a keep-alive connection after 1000 requests by default: the churn is noise
  # in a comparison of proxies.
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "ok\n"; }
  }
}
EOF
  cat >"$TMP/nginx-proxy.conf" <<EOF
worker_processes 1;
pid $TMP/nginx-proxy/nginx.pid;
error_log $TMP/nginx-proxy/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream bench_backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://bench_backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  cat >"$TMP/portico.yaml" <<EOF
apis:
  - id: bench
    kind: http
    routes:
      - key: ANY /{proxy+}
        integration:
          type: http_proxy
          uri: http://127.0.0.1:$BACKEND_PORT/{proxy}
    stages:
      - name: b
EOF
}
